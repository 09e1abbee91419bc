"""Self-supervised landmark discovery: Siamese regressor trained through thin-plate splines."""
