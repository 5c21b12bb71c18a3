"""Active learning: which objects experts should label next (`plankton select`), and the strategies it uses."""
