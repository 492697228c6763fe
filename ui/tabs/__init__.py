"""One module per tab; each `build_*_tab(ctx, state)` lays out its components and wires its handlers."""
