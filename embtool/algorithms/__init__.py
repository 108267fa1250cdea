"""Pure numpy algorithms: arrays in, arrays out; no files, no printing."""
