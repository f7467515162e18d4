package sync

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/moongate-edge/moongate/mqtt/mqtttest"
	"github.com/moongate-edge/moongate/store"
)

// A record whose topic (the template expanded with its stream) is longer
// than the upstream broker takes makes the broker close the connection
// (moongate's embedded broker over 1 KiB, AWS IoT over 256 bytes), like a
// payload over its limit: re-sent on every attempt, it held every record
// behind it for ever. With max_topic set to the broker's limit, it is
// refused before it is sent (a dead letter) and the others are delivered.
func TestMQTTMaxTopic(t *testing.T) {
	mq := mqtttest.StartMosquitto(t)
	col := mqttSubscriber(t, mq.URL())
	st := openStore(t, "", store.DurabilityNone)
	want := commitRecords(t, st, 3, 1, "up")
	long := "s" + strings.Repeat("x", 1019) // a valid stream name (<= 1024 bytes)
	if _, err := st.Commit(context.Background(), &store.Commit{Records: []store.Record{{Stream: long, Function: "f", Device: "d1",
		EventID: "long", EventTS: time.Now().UnixMilli(), Data: []byte(`{"n":0}`), Targets: []string{"up"}}}}); err != nil {
		t.Fatal(err)
	}
	want = append(want, commitRecords(t, st, 3, 1, "up")...)
	tc := fastTarget("up", "mqtt")
	tc.MQTT.Broker = mq.URL()
	tc.MQTT.MaxTopic = 1024 // a moongate upstream
	m, _ := startManager(t, st, tc)
	waitFor(t, 20*time.Second, "the long-topic record dead-lettered, the rest delivered", func() bool {
		s := statusOf(m, "up")
		return s.DeadLettered == 1 && s.Delivered == int64(len(want)) && s.Backlog == 0
	})
	waitFor(t, 10*time.Second, "subscriber has all", func() bool { return col.distinct() == len(want) })
	checkDelivery(t, want, col.snapshot())
	dls, err := st.ListDeadLetters(context.Background(), DeadLetterPrefix+"up", 0, 10)
	if err != nil || len(dls) != 1 || !strings.Contains(dls[0].Error, "exceeds the target's max_topic of 1024 bytes") {
		t.Fatalf("dead letters %+v %v", dls, err)
	}
}
