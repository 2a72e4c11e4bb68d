"""What customers register: endpoints (URL, event filter, sealed secrets) and API keys.

Validation of what is registered lives here, so the API and the CLI refuse the
same input with the same message. May import: ``deliverer.storage``,
``deliverer.security``, ``deliverer.settings``, ``outbox``.
"""
