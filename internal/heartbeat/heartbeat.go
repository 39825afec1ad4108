// Package heartbeat logs cellos-fleet 0.5.1's heartbeat event, which
// operators' log pipelines watch to know a runner is alive.
package heartbeat

import (
	"context"
	"log/slog"
	"time"
)

// EventType is the heartbeat's event_type, unchanged from 0.5.1.
const EventType = "dev.cellos.events.fleet.v1.heartbeat"

// Config is what a heartbeat reports, and how often.
type Config struct {
	Interval    time.Duration // positive
	Bucket      string
	Prefix      string
	QueueName   string
	Pool        string
	Concurrency int
	InFlight    func() int // cells running now
	Logger      *slog.Logger
}

// Run logs a heartbeat at once and then every interval until ctx ends.
func Run(ctx context.Context, cfg Config) {
	t := time.NewTicker(cfg.Interval)
	defer t.Stop()
	for {
		cfg.Logger.Info("heartbeat",
			"event_type", EventType,
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
