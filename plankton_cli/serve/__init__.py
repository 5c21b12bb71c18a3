"""Servers that run plankton's models and commands for other platforms: DEEPaaS (`deepaas`). The top stage: its
train endpoint calls the `plankton finetune` command."""
