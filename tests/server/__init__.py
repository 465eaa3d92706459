"""Tests of the admission server (webhook/server/), most of them against it running."""
