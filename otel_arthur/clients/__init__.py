"""HTTP clients, one per destination (``v3``, ``engine``), and what they share (``http``)."""
