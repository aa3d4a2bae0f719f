"""Reads every record of one topic from the beginning with kafka-python (an independent client:
pure Python, Apache Kafka's protocol) and prints one JSON line per record: partition, offset,
key, value and the partition Apache Kafka's default partitioner gives the key (kafka-python's
own murmur2), so the test can check streamgate's partitioning against it.

usage: consume.py BOOTSTRAP TOPIC [--sasl MECHANISM USER PASSWORD] [--cafile CA]
"""
import json
import sys

from kafka import KafkaConsumer, TopicPartition
from kafka.partitioner.default import murmur2


def main():
    bootstrap, topic = sys.argv[1], sys.argv[2]
    args = sys.argv[3:]
    options = dict(
        bootstrap_servers=bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        consumer_timeout_ms=3000,
    )
    if "--sasl" in args:
        i = args.index("--sasl")
        options.update(
            sasl_mechanism=args[i + 1],
            sasl_plain_username=args[i + 2],
            sasl_plain_password=args[i + 3],
            security_protocol="SASL_SSL" if "--cafile" in args else "SASL_PLAINTEXT",
        )
    if "--cafile" in args:
        options.update(ssl_cafile=args[args.index("--cafile") + 1], ssl_check_hostname=True)
        options.setdefault("security_protocol", "SSL")
    consumer = KafkaConsumer(**options)
    partitions = consumer.partitions_for_topic(topic)
    if not partitions:
        print(json.dumps({"error": f"no topic {topic}"}))
        return 1
    tps = [TopicPartition(topic, p) for p in sorted(partitions)]
    consumer.assign(tps)
    consumer.seek_to_beginning(*tps)
    for m in consumer:
        expected = None
        if m.key is not None:
            expected = (murmur2(m.key) & 0x7FFFFFFF) % len(partitions)
        print(
            json.dumps(
                {
                    "partition": m.partition,
                    "offset": m.offset,
                    "key": m.key.decode() if m.key is not None else None,
                    "value": m.value.decode(),
                    "expected_partition": expected,
                }
            )
        )
    consumer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
