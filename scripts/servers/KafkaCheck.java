// Readiness / sanity check for the local Kafka test broker (scripts/servers.sh).
// Compiled once against the broker's own classpath (.servers/kafka/lib) and run as:
//
//   java -cp <check-dir>:<lib>/* KafkaCheck ping <bootstrap> <timeout-ms>
//       Admin request round trip: describeCluster (a node and a controller answer) + listTopics.
//   java -cp <check-dir>:<lib>/* KafkaCheck txn <bootstrap> <timeout-ms>
//       Creates topic _tidings_servers_check if needed, commits one record with a transactional
//       producer, reads it back with a read_committed consumer group and commits the offset.
//       Proves that __transaction_state and __consumer_offsets work on this single node.
//
// Exit 0 on success; otherwise prints one line to stderr and exits 1.

import java.time.Duration;
import java.util.Collections;
import java.util.List;
import java.util.Properties;
import java.util.UUID;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.ExecutionException;

import org.apache.kafka.clients.admin.Admin;
import org.apache.kafka.clients.admin.AdminClientConfig;
import org.apache.kafka.clients.admin.DescribeClusterResult;
import org.apache.kafka.clients.admin.NewTopic;
import org.apache.kafka.clients.consumer.ConsumerConfig;
import org.apache.kafka.clients.consumer.ConsumerRecord;
import org.apache.kafka.clients.consumer.KafkaConsumer;
import org.apache.kafka.clients.producer.KafkaProducer;
import org.apache.kafka.clients.producer.ProducerConfig;
import org.apache.kafka.clients.producer.ProducerRecord;
import org.apache.kafka.common.errors.TopicExistsException;
import org.apache.kafka.common.serialization.StringDeserializer;
import org.apache.kafka.common.serialization.StringSerializer;

public final class KafkaCheck {
    static final String TOPIC = "_tidings_servers_check";

    public static void main(String[] args) {
        if (args.length != 3) {
            System.err.println("usage: KafkaCheck ping|txn <bootstrap> <timeout-ms>");
            System.exit(2);
        }
        String mode = args[0];
        String bootstrap = args[1];
        int timeoutMs = Integer.parseInt(args[2]);
        try {
            switch (mode) {
                case "ping": ping(bootstrap, timeoutMs); break;
                case "txn": txn(bootstrap, timeoutMs); break;
                default:
                    System.err.println("unknown mode " + mode);
                    System.exit(2);
            }
            System.exit(0);
        } catch (Throwable t) {
            Throwable root = t;
            while (root instanceof ExecutionException && root.getCause() != null) {
                root = root.getCause();
            }
            System.err.println("kafka " + mode + " check against " + bootstrap + " failed: "
                    + root.getClass().getSimpleName() + ": " + root.getMessage());
            System.exit(1);
        }
    }

    static Properties adminProps(String bootstrap, int timeoutMs) {
        Properties p = new Properties();
        p.put(AdminClientConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
        p.put(AdminClientConfig.REQUEST_TIMEOUT_MS_CONFIG, Math.min(timeoutMs, 10_000));
        p.put(AdminClientConfig.DEFAULT_API_TIMEOUT_MS_CONFIG, timeoutMs);
        p.put(AdminClientConfig.RECONNECT_BACKOFF_MAX_MS_CONFIG, 500);
        return p;
    }

    static void ping(String bootstrap, int timeoutMs) throws Exception {
        try (Admin admin = Admin.create(adminProps(bootstrap, timeoutMs))) {
            DescribeClusterResult cluster = admin.describeCluster();
            int nodes = cluster.nodes().get(timeoutMs, TimeUnit.MILLISECONDS).size();
            if (nodes < 1) throw new IllegalStateException("describeCluster returned no nodes");
            if (cluster.controller().get(timeoutMs, TimeUnit.MILLISECONDS) == null)
                throw new IllegalStateException("describeCluster returned no controller");
            admin.listTopics().names().get(timeoutMs, TimeUnit.MILLISECONDS);
        }
    }

    static void txn(String bootstrap, int timeoutMs) throws Exception {
        try (Admin admin = Admin.create(adminProps(bootstrap, timeoutMs))) {
            if (!admin.listTopics().names().get(timeoutMs, TimeUnit.MILLISECONDS).contains(TOPIC)) {
                try {
                    admin.createTopics(List.of(new NewTopic(TOPIC, 1, (short) 1)))
                         .all().get(timeoutMs, TimeUnit.MILLISECONDS);
                } catch (ExecutionException e) {
                    if (!(e.getCause() instanceof TopicExistsException)) throw e;
                }
            }
        }

        String marker = "check-" + UUID.randomUUID();
        Properties pp = new Properties();
        pp.put(ProducerConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
        pp.put(ProducerConfig.TRANSACTIONAL_ID_CONFIG, "tidings-servers-check");
        pp.put(ProducerConfig.ENABLE_IDEMPOTENCE_CONFIG, true);
        pp.put(ProducerConfig.MAX_BLOCK_MS_CONFIG, timeoutMs);
        pp.put(ProducerConfig.DELIVERY_TIMEOUT_MS_CONFIG, timeoutMs);
        pp.put(ProducerConfig.REQUEST_TIMEOUT_MS_CONFIG, Math.min(timeoutMs, 10_000));
        pp.put(ProducerConfig.KEY_SERIALIZER_CLASS_CONFIG, StringSerializer.class.getName());
        pp.put(ProducerConfig.VALUE_SERIALIZER_CLASS_CONFIG, StringSerializer.class.getName());
        try (KafkaProducer<String, String> producer = new KafkaProducer<>(pp)) {
            producer.initTransactions();
            producer.beginTransaction();
            producer.send(new ProducerRecord<>(TOPIC, "k", marker)).get(timeoutMs, TimeUnit.MILLISECONDS);
            producer.commitTransaction();
        }

        Properties cp = new Properties();
        cp.put(ConsumerConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
        cp.put(ConsumerConfig.GROUP_ID_CONFIG, "tidings-servers-check");
        cp.put(ConsumerConfig.ISOLATION_LEVEL_CONFIG, "read_committed");
        cp.put(ConsumerConfig.AUTO_OFFSET_RESET_CONFIG, "earliest");
        cp.put(ConsumerConfig.ENABLE_AUTO_COMMIT_CONFIG, false);
        cp.put(ConsumerConfig.DEFAULT_API_TIMEOUT_MS_CONFIG, timeoutMs);
        cp.put(ConsumerConfig.KEY_DESERIALIZER_CLASS_CONFIG, StringDeserializer.class.getName());
        cp.put(ConsumerConfig.VALUE_DESERIALIZER_CLASS_CONFIG, StringDeserializer.class.getName());
        long deadline = System.currentTimeMillis() + timeoutMs;
        try (KafkaConsumer<String, String> consumer = new KafkaConsumer<>(cp)) {
            consumer.subscribe(Collections.singletonList(TOPIC));
            while (System.currentTimeMillis() < deadline) {
                for (ConsumerRecord<String, String> r : consumer.poll(Duration.ofMillis(500))) {
                    if (marker.equals(r.value())) {
                        consumer.commitSync(Duration.ofMillis(timeoutMs));
                        return;
                    }
                }
            }
        }
        throw new IllegalStateException("committed transactional record not read back within " + timeoutMs + "ms");
    }
}
