"""Component resources, one module per responsibility (tokens `my-saas-chat:<module>:<Type>`)."""
