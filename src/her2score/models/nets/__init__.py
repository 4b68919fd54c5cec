"""Model classes (torch modules); the modules one level up register factories that build them, so that
listing the registry does not import torch."""
