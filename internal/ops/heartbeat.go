package ops

// The heartbeat is cellos-fleet 0.5.1's log event, which operators' log
// pipelines watch to know a runner is alive; its fields are unchanged.

import (
	"context"
	"log/slog"
	"time"
)

// HeartbeatEventType is the heartbeat's event_type, unchanged from 0.5.1.
const HeartbeatEventType = "dev.cellos.events.fleet.v1.heartbeat"

// HeartbeatConfig is what a heartbeat reports, and how often.
type HeartbeatConfig struct {
	Interval    time.Duration // positive
	Bucket      string
	Prefix      string
	QueueName   string
	Pool        string
	Concurrency int
	InFlight    func() int // cells running now
	Logger      *slog.Logger
}

// Heartbeat logs a heartbeat at once and then every interval until ctx
// ends; it blocks until then.
func Heartbeat(ctx context.Context, cfg HeartbeatConfig) {
	t := time.NewTicker(cfg.Interval)
	defer t.Stop()
	for {
		cfg.Logger.Info("heartbeat", "event", "ops.heartbeat",
			"event_type", HeartbeatEventType,
			"bucket", cfg.Bucket, "prefix", cfg.Prefix,
			"queue_name", cfg.QueueName, "pool_id", cfg.Pool,
			"in_flight", cfg.InFlight(), "concurrency", cfg.Concurrency)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}
