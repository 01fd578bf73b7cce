"""The files shipped with cswap_nb (checkpoints, zoo.json, the Fashion-MNIST subset): package data, see cswap_nb.data.resources."""
