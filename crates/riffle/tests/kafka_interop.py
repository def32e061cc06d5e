"""The independent Kafka client of tests/kafka.rs (confluent-kafka, its own
librdkafka): produces ad_click events as JSON straight to Riffle's input topic
and reads Riffle's aggregates topic, as a service of another stack would.

  kafka_interop.py produce BROKERS MINUTE_MS N
      N clicks on ad-0..ad-2 inside the minute; every 5th is sent twice (a
      retry with the same event_id). Keys are the ad_id and the partitioner
      is murmur2 (Kafka's Java default), so each ad lands where Riffle's own
      ingest puts it. Prints {"sent": n}.
  kafka_interop.py produce-events BROKERS PARTITIONING FILE
      Produces every line of FILE (one JSON event each) to ad_clicks as it
      is, with PARTITIONING: "default" (key = ad_id and librdkafka's default
      partitioner, consistent_random: CRC32, not Kafka's murmur2), "murmur2"
      (key = ad_id, murmur2_random) or "nokey" (no key; librdkafka spreads
      the records). Prints {"sent": n}.
  kafka_interop.py aggregates BROKERS MINUTE_MS
      Reads every ad_click_aggregates record; the last "count" record of each
      (minute, ad, filter 0) is the current count (records are absolute).
      Prints {ad_id: count} for the minute.
"""
import json
import sys

from confluent_kafka import Consumer, Producer, TopicPartition


def produce(brokers, minute, n):
    producer = Producer({
        "bootstrap.servers": brokers,
        "partitioner": "murmur2_random",
        "enable.idempotence": True,
    })
    sent = 0
    for i in range(n):
        event = {
            "event_type": "ad_click",
            "event_id": "py-%d" % i,
            "event_time": minute + i * 1000,
            "ad_id": "ad-%d" % (i % 3),
            "user_id": "u-%d" % i,
            "ip": "73.162.1.%d" % (i % 250),
            "country": "USA",
        }
        copies = 2 if i % 5 == 0 else 1
        for _ in range(copies):
            producer.produce("ad_clicks", key=event["ad_id"], value=json.dumps(event))
            sent += 1
    if producer.flush(30) != 0:
        sys.exit("not every record was acknowledged")
    print(json.dumps({"sent": sent}))


def produce_events(brokers, partitioning, path):
    config = {"bootstrap.servers": brokers, "enable.idempotence": True}
    if partitioning == "murmur2":
        config["partitioner"] = "murmur2_random"
    elif partitioning not in ("default", "nokey"):
        sys.exit("unknown partitioning %s" % partitioning)
    producer = Producer(config)
    sent = 0
    with open(path) as lines:
        for line in lines:
            line = line.strip()
            if not line:
                continue
            key = None if partitioning == "nokey" else json.loads(line)["ad_id"]
            while True:
                try:
                    producer.produce("ad_clicks", key=key, value=line)
                    break
                except BufferError:
                    producer.poll(0.1)
            sent += 1
    if producer.flush(60) != 0:
        sys.exit("not every record was acknowledged")
    print(json.dumps({"sent": sent}))


def aggregates(brokers, minute):
    consumer = Consumer({
        "bootstrap.servers": brokers,
        "group.id": "interop-reader",
        "enable.auto.commit": False,
    })
    metadata = consumer.list_topics("ad_click_aggregates", timeout=10)
    partitions = metadata.topics["ad_click_aggregates"].partitions
    consumer.assign([TopicPartition("ad_click_aggregates", p, 0) for p in partitions])
    counts = {}
    # Read until the topic stays quiet for 2 s: the test broker's (tansu,
    # memory storage) high watermarks are not reliable enough to stop at.
    while True:
        message = consumer.poll(2)
        if message is None:
            break
        if message.error():
            sys.exit("consume error: %s" % message.error())
        record = json.loads(message.value())
        if (record.get("type") == "count" and record["minute"] == minute
                and record["filter_id"] == 0):
            counts[record["ad_id"]] = record["count"]
    consumer.close()
    print(json.dumps(counts, sort_keys=True))


if __name__ == "__main__":
    mode, brokers = sys.argv[1], sys.argv[2]
    if mode == "produce-events":
        produce_events(brokers, sys.argv[3], sys.argv[4])
        sys.exit(0)
    minute = int(sys.argv[3])
    if mode == "produce":
        produce(brokers, minute, int(sys.argv[4]))
    elif mode == "aggregates":
        aggregates(brokers, minute)
    else:
        sys.exit("unknown mode %s" % mode)
