"""Stage 4, train: models and their export format, the shared recipe and split protocol, `plankton pretrain`,
`plankton finetune` and `plankton distill`."""
