"""captioner: Show, Attend and Tell image captioning (Xu et al., 2015)."""
