"""Moving ISMS messages: the ``idc_command`` endpoint, uploads, ``idc_commandack`` and retries."""
