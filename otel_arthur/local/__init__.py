"""Local stand-ins for the services otel-arthur talks to: Arthur's v3 API and an OpenAI-compatible API.

Arthur is a SaaS and the model provider is remote; these let the demo and the tests run offline
against real HTTP. They need the ``server`` extra (Starlette + uvicorn).
"""
