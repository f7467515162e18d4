package apiserver_test

import (
	"context"
	"strings"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/moongate-edge/moongate/store"
)

// TestUndeliverablePublishIsDeadLettered: a committed local publish that no
// broker can take (its topic is not UTF-8; written by an older version, or
// by any path that skipped the runtime's check) does not hold the publishes
// behind it: it goes to the dead letters (function "_publish"), which list
// over the API although the topic is not valid text, and replay skips it
// with the reason. Before, the publisher retried it every second forever
// and nothing after it was ever published.
func TestUndeliverablePublishIsDeadLettered(t *testing.T) {
	e := startDaemon(t, daemonConfig(t.TempDir(), ""))
	got := make(chan string, 4)
	sub := connect(t, e.mqtt, "sub")
	if tok := sub.Subscribe("ok/t", 1, func(_ paho.Client, m paho.Message) { got <- string(m.Payload()) }); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("subscribe: %v", tok.Error())
	}
	ctx := context.Background()
	if _, err := e.d.Store().Commit(ctx, &store.Commit{Publishes: []store.Publish{
		{Topic: "bad\xff/t", Payload: []byte("never"), QoS: 1},
		{Topic: "ok/t", Payload: []byte("after"), QoS: 1},
	}}); err != nil {
		t.Fatal(err)
	}
	select {
	case p := <-got:
		if p != "after" {
			t.Fatalf("received %q", p)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("the publish behind the undeliverable one never came")
	}
	var dls obj
	e.mustCall(200, "GET", "/v1/deadletters?function=_publish", readToken, nil, &dls)
	list, _ := dls["dead_letters"].([]any)
	if len(list) != 1 {
		t.Fatalf("dead letters: %v", dls)
	}
	if k, _ := field(dls, "dead_letters.0.key").(string); k != "bad\uFFFD/t" {
		t.Errorf("key %q", k)
	}
	if msg, _ := field(dls, "dead_letters.0.error").(string); !strings.Contains(msg, "invalid topic") {
		t.Errorf("error %q", msg)
	}
	var rep obj
	e.mustCall(200, "POST", "/v1/deadletters:replay", adminToken, obj{"all": true}, &rep)
	if rep["skipped"] != "1" || !strings.Contains(field(rep, "errors.0").(string), "cannot be replayed") {
		t.Errorf("replay: %v", rep)
	}
}
