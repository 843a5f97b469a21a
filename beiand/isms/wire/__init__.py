"""The ISMS wire formats, sans-IO: envelope, SOAP, XML codecs, codes, fields, profiles, types."""
