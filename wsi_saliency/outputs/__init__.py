"""Writers: each takes a ``SlideResult`` (or plain arrays) and writes one kind of file,
atomically (temporary name, then rename), so nothing half-written looks finished."""
