"""Load tooling (`make loadtest`): the production server under hundreds of slow calls.

- `provider`: a loopback OpenAI-compatible provider on asyncio (aiohttp) that
  holds thousands of slow calls and streams at once, with a scripted delay and
  chunking, and counts requests and the peak in flight (`GET /_stats`).
- `driver`: an asyncio client over many independent connection pools that
  fires the scenarios and times every request and first chunk.
- `procs`: the contenders started as their users start them (`make serve`,
  the LiteLLM proxy) in their own process groups, and the CPU and memory of
  their whole process tree.
- `__main__`: the scenarios, the run order and the table.

Every figure is printed next to the same driver going straight to the
provider in the same run: that column shows what the driver and the provider
cost on their own, so the other columns are not measuring the tool.
"""
