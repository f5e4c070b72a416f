"""AI text generation from templates, through the resilient upstream client."""
