"""Guards that every other layer relies on: the SSRF guard (where webhooks may not go)
and sealing (endpoint secrets encrypted at rest).

Pure functions over their inputs: imports nothing from the rest of ``deliverer``.
"""
