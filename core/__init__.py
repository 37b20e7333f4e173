"""What every layer may import: the one error hierarchy, logging set-up, secret
redaction and money. Nothing here touches the database, a provider or the chat, so
`memory`, `pipelines`, `tools` and `chat_app` all depend on it and it on none of them.
"""
