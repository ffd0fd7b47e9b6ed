"""The Kafka side of dwell: broker management, consuming, decoding, dead letters."""
