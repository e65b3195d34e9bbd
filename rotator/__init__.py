"""connect-key-rotator: keys for Amazon Connect's encrypted customer input, rotated and audited."""
