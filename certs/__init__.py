"""Certificate work: a CA and serving certificates for the webhook."""
