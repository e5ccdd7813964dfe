"""Tests of the gateway's cloud link against a real Mosquitto broker."""
