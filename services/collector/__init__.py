"""The collector: FeedbackService (Report, StreamReport) -> Kafka, acks=all."""
