"""GDPA (Kunlun's generalized dot-product attention): reference, cpu and triton backends."""
