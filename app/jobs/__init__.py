"""Jobs: the flow of a training or deletion job through the workers."""
