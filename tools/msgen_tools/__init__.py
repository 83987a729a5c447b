"""msgen-tools: reference models, training and fixtures for the msgen Swift runtime."""
