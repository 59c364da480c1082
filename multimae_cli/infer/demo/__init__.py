"""`multimae demo`: a local web page to play with a checkpoint's masks (engine, server, page, Space export)."""
