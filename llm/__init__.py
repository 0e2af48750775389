"""Chat models behind one protocol (`ChatModel.stream`): an OpenAI-compatible client and a local llama.cpp model."""
