"""The regulator's interface (ISMS.md, docs/isms.md): what SMMS sends and what beiand answers.

``wire/`` is sans-IO (the envelope, SOAP, the XML codecs, the codes, fields and profiles);
``store.py`` keeps the commands in force and compiles them into the rules that policy's
overlay evaluates (``beiand.policy.matcher``); ``reports.py`` and ``answers.py`` write the data
files; ``transport/`` moves them (the endpoint, uploads, acks and their retries).
"""
