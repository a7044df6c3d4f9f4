"""The two long-context music models (DSMR, PerceiverS) and the layers they share."""
