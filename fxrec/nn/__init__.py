"""Building blocks shared by interactions, models and transfer channels."""
