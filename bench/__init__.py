"""`make bench`: the service against raw ONNX Runtime and a naive server, in one run."""
