"""One module per method, wiring data + model + losses + training + evaluation."""
