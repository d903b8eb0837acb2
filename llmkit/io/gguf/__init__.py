"""GGUF, the file llama.cpp and ollama run: names, metadata, the streaming sink and the reader."""
