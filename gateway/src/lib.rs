//! The authenticated gRPC and HTTP front door: validates requests and writes them to Kafka
