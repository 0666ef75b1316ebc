"""The classic recurrent language model shared by the Elman RNN, LSTM and GRU architectures."""
