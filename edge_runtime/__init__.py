"""Device side: inspects frames with numpy, OpenVINO and hnswlib only (never torch)."""
