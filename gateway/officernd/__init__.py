"""OfficeRnD integration: the Flex API v2 connector, webhooks, and the mapping into the site."""
