package notify

import (
	"encoding/json"
	"net/url"
	"strings"
)

// maxEvent bounds a message: one record of an S3 event is about 1 KiB, its key
// at most 1 KiB. Anything much larger is not an event of a store.
const maxEvent = 16 << 10

// Results of reading one message, as counted in fleetd_notify_events_total.
const (
	ResultHint    = "hint"    // a new key under pending/: handed to a worker
	ResultIgnored = "ignored" // an event of this bucket about something else
	ResultDropped = "dropped" // garbled, oversized or of another bucket
)

// record is the part of an AWS-style S3 event record fleetd reads. Nothing in
// it is trusted: the key is only where to look.
type record struct {
	EventName string `json:"eventName"`
	S3        struct {
		Bucket struct {
			Name string `json:"name"`
		} `json:"bucket"`
		Object struct {
			Key string `json:"key"`
		} `json:"object"`
	} `json:"s3"`
}

// message is one published event: the records, or a test event a store sends
// when it connects (versitygw: "Event":"s3:TestEvent"; AWS: the same).
type message struct {
	Records []record `json:"Records"`
	Event   string   `json:"Event"`
}

// filter decides which messages are hints.
type filter struct {
	bucket  string
	dir     string // the lane's pending/ directory
	urlKeys bool   // keys are URL-encoded, + for a space (AWS, MinIO)
}

// read returns the key a message hints at and the result to count. Only a
// message of one record (what versitygw, MinIO and AWS send) is read.
func (f filter) read(data []byte) (key, result string) {
	if len(data) > maxEvent {
		return "", ResultDropped
	}
	var m message
	if err := json.Unmarshal(data, &m); err != nil {
		return "", ResultDropped
	}
	if len(m.Records) == 0 {
		if strings.HasSuffix(m.Event, "TestEvent") {
			return "", ResultIgnored
		}
		return "", ResultDropped
	}
	if len(m.Records) != 1 {
		return "", ResultDropped
	}
	r := m.Records[0]
	if r.S3.Bucket.Name != f.bucket || r.S3.Object.Key == "" {
		return "", ResultDropped
	}
	key = r.S3.Object.Key
	if f.urlKeys {
		k, err := url.QueryUnescape(key)
		if err != nil {
			return "", ResultDropped
		}
		key = k
	}
	if !strings.HasPrefix(key, f.dir) {
		return "", ResultIgnored
	}
	switch {
	case strings.HasPrefix(r.EventName, "s3:ObjectCreated:"):
		return key, ResultHint
	case strings.HasPrefix(r.EventName, "s3:ObjectRemoved:") && !strings.HasSuffix(key, ".json"):
		// A marker went (fleetd resume deletes the pause key): worth a
		// listing. A spec's removal is a claim: nothing to do.
		return key, ResultHint
	}
	return "", ResultIgnored
}
