package trigger

import (
	"errors"
	"fmt"
	pathpkg "path"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/moongate-edge/moongate/gateway/config"
)

// MaxManifestBytes is the largest manifest ParseManifest accepts (64 KiB):
// decoding takes up to about 180 times the size in memory (a 1 MiB
// manifest took 186 MiB), and GET /v1/functions decodes every manifest.
const MaxManifestBytes = 64 << 10

// Hard caps of the limits a manifest may set (on top of those of
// gateway/config: timeout, max_steps, max_memory, max_concurrency,
// idle_timeout).
const (
	MaxResultBytes = config.Size(16 << 20)
	MaxEffects     = 10000
	MaxEffectBytes = config.Size(16 << 20)
	MaxCallDepth   = 10000
	MinMemory      = config.Size(64 << 10)
)

// TriggerKind is the kind of a trigger.
type TriggerKind string

// Trigger kinds.
const (
	KindMQTT  TriggerKind = "mqtt"
	KindTimer TriggerKind = "timer"
	KindCron  TriggerKind = "cron"
	KindHTTP  TriggerKind = "http"
	// KindStream runs the function on every record committed to a stream
	// (function chaining).
	KindStream TriggerKind = "stream"
	// KindState runs the function on every committed change of another
	// function's state under a key prefix.
	KindState TriggerKind = "state"
	// KindUpload runs the function on every blob committed to a bucket
	// (an upload, or a function's blob.write), optionally only for names
	// matching a glob.
	KindUpload TriggerKind = "upload"
)

// TriggerSpec is one entry of a manifest's triggers list, a mapping with
// exactly one key:
//
//	triggers:
//	  - mqtt: "devices/{device}/telemetry"  # a Pattern
//	  - timer: "@every 1m"                  # or "30s", "@hourly", a cron expression
//	  - cron: "*/5 * * * *"                 # a 5-field cron expression or a descriptor
//	  - http: {methods: [GET, POST]}        # methods default to [POST]
//	  - stream: readings                    # records emitted to a stream
//	  - state: {function: counter, prefix: "temp/"} # changes of a function's state
type TriggerSpec struct {
	Kind     TriggerKind
	Spec     string         // the text of an mqtt, timer, cron or stream trigger
	MQTT     *Pattern       // KindMQTT
	Schedule Schedule       // KindTimer and KindCron
	HTTP     *HTTPTrigger   // KindHTTP
	State    *StateTrigger  // KindState
	Upload   *UploadTrigger // KindUpload
	Line     int            // line in the manifest
}

// StateTrigger selects the state changes that run a function: those of
// Function's keys that start with Prefix ("" is every key).
type StateTrigger struct {
	Function string `yaml:"function"`
	Prefix   string `yaml:"prefix"`
}

// UploadTrigger selects the blobs that run a function: those stored in
// Bucket whose name matches the path.Match glob Name ("" is every name).
type UploadTrigger struct {
	Bucket string `yaml:"bucket"`
	Name   string `yaml:"name"`
}

// Matches reports whether a blob of bucket and name runs the trigger.
func (u *UploadTrigger) Matches(bucket, name string) bool {
	if bucket != u.Bucket {
		return false
	}
	if u.Name == "" {
		return true
	}
	ok, _ := pathpkg.Match(u.Name, name)
	return ok
}

var uploadBucketRE = regexp.MustCompile(`^[a-z0-9][a-z0-9_-]{0,62}$`)

// HTTPTrigger lets the API invoke the function with an HTTP request.
type HTTPTrigger struct {
	Methods []string `yaml:"methods"` // upper-case HTTP methods (default [POST])
}

var httpMethods = map[string]bool{"GET": true, "POST": true, "PUT": true, "PATCH": true, "DELETE": true, "HEAD": true, "OPTIONS": true}

// UnmarshalYAMLNode implements config.NodeUnmarshaler.
func (t *TriggerSpec) UnmarshalYAMLNode(file, path string, n *yaml.Node) error {
	t.Line = n.Line
	if n.Kind != yaml.MappingNode || len(n.Content) != 2 {
		return errors.New(`a trigger is a mapping with one key: mqtt, timer, cron, http, stream, state or upload (e.g. - mqtt: "devices/{device}/telemetry")`)
	}
	k, v := n.Content[0], n.Content[1]
	t.Kind = TriggerKind(k.Value)
	p := path + "." + k.Value
	at := func(msg string, err error) error {
		return &config.Error{File: file, Line: v.Line, Path: p, Msg: msg, Err: err}
	}
	scalar := func() (string, error) {
		if v.Kind != yaml.ScalarNode || v.Tag != "!!str" {
			return "", at(fmt.Sprintf("expected a string, got %s", kindOf(v)), nil)
		}
		return v.Value, nil
	}
	var err error
	switch t.Kind {
	case KindMQTT:
		if t.Spec, err = scalar(); err != nil {
			return err
		}
		if t.MQTT, err = ParsePattern(t.Spec); err != nil {
			return at(err.Error(), err)
		}
	case KindTimer, KindCron:
		if t.Spec, err = scalar(); err != nil {
			return err
		}
		if t.Kind == KindTimer {
			t.Schedule, err = parseTimer(t.Spec)
		} else {
			t.Schedule, err = ParseSchedule(t.Spec)
		}
		if err != nil {
			return at(err.Error(), err)
		}
	case KindHTTP:
		t.HTTP = &HTTPTrigger{}
		if err := config.DecodeNode(file, p, v, t.HTTP, nil); err != nil {
			return err
		}
		if t.HTTP.Methods == nil {
			t.HTTP.Methods = []string{"POST"}
		}
		if len(t.HTTP.Methods) == 0 {
			return at("methods must not be empty", nil)
		}
		seen := map[string]bool{}
		for _, m := range t.HTTP.Methods {
			if !httpMethods[m] {
				return at(fmt.Sprintf("unknown HTTP method %q (valid: GET, POST, PUT, PATCH, DELETE, HEAD, OPTIONS)", clip(m)), nil)
			}
			if seen[m] {
				return at(fmt.Sprintf("method %s listed twice", m), nil)
			}
			seen[m] = true
		}
	case KindStream:
		if t.Spec, err = scalar(); err != nil {
			return err
		}
		if !streamRE.MatchString(t.Spec) {
			return at(fmt.Sprintf("invalid stream name %q: use [a-z0-9][a-z0-9_.-]{0,127}", clip(t.Spec)), nil)
		}
	case KindState:
		t.State = &StateTrigger{}
		if err := config.DecodeNode(file, p, v, t.State, nil); err != nil {
			return err
		}
		if !ValidFunctionName(t.State.Function) {
			return at(fmt.Sprintf("state trigger needs the function whose state it watches: invalid function name %q", clip(t.State.Function)), nil)
		}
		if len(t.State.Prefix) > 1024 || strings.ContainsRune(t.State.Prefix, 0) {
			return at("state prefix must be at most 1024 bytes without NUL", nil)
		}
		t.Spec = t.State.Function + "\x00" + t.State.Prefix
	case KindUpload:
		t.Upload = &UploadTrigger{}
		if err := config.DecodeNode(file, p, v, t.Upload, nil); err != nil {
			return err
		}
		if !uploadBucketRE.MatchString(t.Upload.Bucket) {
			return at(fmt.Sprintf("upload trigger needs a bucket: invalid bucket name %q (use [a-z0-9][a-z0-9_-]{0,62})", clip(t.Upload.Bucket)), nil)
		}
		if len(t.Upload.Name) > 1024 || strings.ContainsRune(t.Upload.Name, 0) {
			return at("upload name glob must be at most 1024 bytes without NUL", nil)
		}
		if _, err := pathpkg.Match(t.Upload.Name, ""); err != nil {
			return at(fmt.Sprintf("invalid name glob %q: %v", clip(t.Upload.Name), err), err)
		}
		t.Spec = t.Upload.Bucket + "\x00" + t.Upload.Name
	default:
		return &config.Error{File: file, Line: k.Line, Path: p, Msg: "unknown trigger kind (valid: mqtt, timer, cron, http, stream, state, upload)"}
	}
	return nil
}

func kindOf(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	case yaml.AliasNode:
		return "an alias"
	}
	if n.Tag == "!!null" {
		return "nothing"
	}
	return fmt.Sprintf("%s %q", strings.TrimPrefix(n.Tag, "!!"), clip(n.Value))
}

// ManifestLimits are a function's sandbox limits. A zero value means "the
// gateway default" (gateway/config functions section, or luavm's defaults
// for the limits that section does not have).
type ManifestLimits struct {
	Timeout        config.Duration `yaml:"timeout"`          // at most config.MaxTimeout
	MaxSteps       int64           `yaml:"max_steps"`        // at most config.MaxSteps
	MaxMemory      config.Size     `yaml:"max_memory"`       // MinMemory to config.MaxMemory
	MaxResultBytes config.Size     `yaml:"max_result_bytes"` // at most MaxResultBytes
	MaxEffects     int             `yaml:"max_effects"`      // at most MaxEffects
	MaxEffectBytes config.Size     `yaml:"max_effect_bytes"` // at most MaxEffectBytes
	MaxCallDepth   int             `yaml:"max_call_depth"`   // at most MaxCallDepth
}

// Manifest is a function's NAME.yaml. Decoding is strict, like the gateway
// configuration: unknown keys, wrong types and bad values are errors naming
// file, line and key. A Manifest is a plain value: safe for concurrent reads.
type Manifest struct {
	Name        string        `yaml:"-"` // from the file name
	Description string        `yaml:"description"`
	Triggers    []TriggerSpec `yaml:"triggers"`
	// Stream receives the function's return value (default: the name).
	Stream string `yaml:"stream"`
	// Sync lists the upstream targets the records are routed to.
	Sync   []string       `yaml:"sync"`
	Limits ManifestLimits `yaml:"limits"`
	// MinInstances, MaxConcurrency and IdleTimeout override the gateway
	// defaults when not zero.
	MinInstances   int             `yaml:"min_instances"`
	MaxConcurrency int             `yaml:"max_concurrency"`
	IdleTimeout    config.Duration `yaml:"idle_timeout"`
	// Config is the function's read-only settings (any YAML mapping).
	Config map[string]any `yaml:"config"`
	// OrderBy is the capture whose value orders events: events with one
	// value are processed in order. After parsing it is never empty: it is
	// "device" when every mqtt trigger captures {device}, else "topic" (the
	// whole topic orders), unless set explicitly to a capture present in
	// every mqtt trigger, or to "topic".
	OrderBy string `yaml:"order_by"`
}

// OrderTopic is the OrderBy value meaning "order by the whole topic".
const OrderTopic = "topic"

// Patterns returns the patterns of the mqtt triggers, in order.
func (m *Manifest) Patterns() []*Pattern {
	var ps []*Pattern
	for _, t := range m.Triggers {
		if t.Kind == KindMQTT {
			ps = append(ps, t.MQTT)
		}
	}
	return ps
}

// Schedules returns the schedules of the timer and cron triggers, in order.
func (m *Manifest) Schedules() []Schedule {
	var ss []Schedule
	for _, t := range m.Triggers {
		if t.Kind == KindTimer || t.Kind == KindCron {
			ss = append(ss, t.Schedule)
		}
	}
	return ss
}

// Streams returns the streams of the stream triggers, in order.
func (m *Manifest) Streams() []string {
	var ss []string
	for _, t := range m.Triggers {
		if t.Kind == KindStream {
			ss = append(ss, t.Spec)
		}
	}
	return ss
}

// Uploads returns the upload triggers, in order.
func (m *Manifest) Uploads() []UploadTrigger {
	var us []UploadTrigger
	for _, t := range m.Triggers {
		if t.Kind == KindUpload {
			us = append(us, *t.Upload)
		}
	}
	return us
}

// StateWatches returns the state triggers, in order.
func (m *Manifest) StateWatches() []StateTrigger {
	var ws []StateTrigger
	for _, t := range m.Triggers {
		if t.Kind == KindState {
			ws = append(ws, *t.State)
		}
	}
	return ws
}

// OrderKey returns the key that orders an MQTT event matched with captures:
// the value of the OrderBy capture, or the topic.
func (m *Manifest) OrderKey(topic string, captures map[string]string) string {
	if v, ok := captures[m.OrderBy]; ok && m.OrderBy != OrderTopic {
		return v
	}
	return topic
}

var (
	functionNameRE = regexp.MustCompile(`^[a-z0-9][a-z0-9_-]{0,62}$`)
	streamRE       = regexp.MustCompile(`^[a-z0-9][a-z0-9_.-]{0,127}$`)
)

// ValidFunctionName reports whether name is a valid function name:
// [a-z0-9][a-z0-9_-]{0,62}.
func ValidFunctionName(name string) bool { return functionNameRE.MatchString(name) }

// ParseManifest parses a manifest. file names it in messages; the function
// name is file's base name without ".yaml" ("telemetry.yaml" ->
// "telemetry") and must be valid. Errors (all problems, joined) wrap
// [ErrManifest] and config.ErrInvalid and carry file, line and key path
// (see config.Errors); an invalid name wraps [ErrFunctionName].
func ParseManifest(file string, data []byte) (*Manifest, error) {
	return parseManifest(file, data, MaxManifestBytes, config.MaxElements)
}

// MaxStoredManifestBytes bounds ParseStoredManifest: the limit of new
// manifests was 1 MiB until 2026-11-29.
const MaxStoredManifestBytes = 1 << 20

// ParseStoredManifest is ParseManifest for a manifest kept in the store:
// one stored before MaxManifestBytes came down to 64 KiB (up to 1 MiB)
// still loads (refused, its function would vanish on upgrade, its topics
// unsubscribed and their events dropped).
func ParseStoredManifest(file string, data []byte) (*Manifest, error) {
	// No element bound short of one per byte: none applied then.
	return parseManifest(file, data, MaxStoredManifestBytes, MaxStoredManifestBytes)
}

func parseManifest(file string, data []byte, limit, maxElements int) (*Manifest, error) {
	name := strings.TrimSuffix(filepath.Base(file), ".yaml")
	if !ValidFunctionName(name) {
		return nil, fmt.Errorf("%w %q (from %s): use [a-z0-9][a-z0-9_-]{0,62}", ErrFunctionName, clip(name), clip(file))
	}
	if len(data) > limit {
		return nil, manifestError{&config.Error{File: file, Msg: fmt.Sprintf("manifest is %d bytes, larger than the limit of %d", len(data), limit)}}
	}
	m := &Manifest{Name: name}
	lines, err := config.UnmarshalLimit(file, data, m, maxElements)
	if err == nil {
		err = m.validate(file, lines)
	}
	if err != nil {
		es := config.Errors(err)
		out := make([]error, len(es))
		for i, e := range es {
			out[i] = manifestError{e}
		}
		return nil, errors.Join(out...)
	}
	return m, nil
}

func (m *Manifest) validate(file string, lines config.Lines) error {
	var errs []error
	add := func(path, format string, args ...any) {
		errs = append(errs, &config.Error{File: file, Line: lines.At(path), Path: path, Msg: fmt.Sprintf(format, args...)})
	}
	if m.Stream == "" {
		m.Stream = m.Name
	} else if !streamRE.MatchString(m.Stream) {
		add("stream", "invalid stream name %q: use [a-z0-9][a-z0-9_.-]{0,127}", clip(m.Stream))
	}
	seenSync := map[string]bool{}
	for i, s := range m.Sync {
		p := fmt.Sprintf("sync[%d]", i)
		if !functionNameRE.MatchString(s) {
			add(p, "invalid sync target name %q: use [a-z0-9][a-z0-9_-]{0,62}", clip(s))
		} else if seenSync[s] {
			add(p, "sync target %q listed twice", s)
		}
		seenSync[s] = true
	}
	seenTrig := map[string]int{}
	for i, t := range m.Triggers {
		if t.Kind == KindHTTP {
			continue
		}
		key := string(t.Kind) + "\x00" + t.Spec
		if t.Kind == KindTimer || t.Kind == KindCron {
			// One key space for timer and cron, by what the schedule
			// means: "1m", "60s" and "@every 1m" fire together, as do
			// "@hourly" and "0 * * * *".
			key = "schedule\x00" + scheduleKey(t.Schedule, t.Spec)
		}
		if j, dup := seenTrig[key]; dup {
			add(fmt.Sprintf("triggers[%d]", i), "same trigger as triggers[%d]", j)
		}
		seenTrig[key] = i
	}
	l := m.Limits
	if l.Timeout > config.Duration(config.MaxTimeout) {
		add("limits.timeout", "%s longer than the cap %s", l.Timeout, config.MaxTimeout)
	}
	if l.MaxSteps < 0 || l.MaxSteps > config.MaxSteps {
		add("limits.max_steps", "%d out of range [0, %d]", l.MaxSteps, config.MaxSteps)
	}
	if l.MaxMemory != 0 && (l.MaxMemory < MinMemory || l.MaxMemory > config.MaxMemory) {
		add("limits.max_memory", "%s out of range [%s, %s]", l.MaxMemory, MinMemory, config.MaxMemory)
	}
	if l.MaxResultBytes > MaxResultBytes {
		add("limits.max_result_bytes", "%s larger than the cap %s", l.MaxResultBytes, MaxResultBytes)
	}
	if l.MaxEffects < 0 || l.MaxEffects > MaxEffects {
		add("limits.max_effects", "%d out of range [0, %d]", l.MaxEffects, MaxEffects)
	}
	if l.MaxEffectBytes > MaxEffectBytes {
		add("limits.max_effect_bytes", "%s larger than the cap %s", l.MaxEffectBytes, MaxEffectBytes)
	}
	if l.MaxCallDepth < 0 || l.MaxCallDepth > MaxCallDepth {
		add("limits.max_call_depth", "%d out of range [0, %d]", l.MaxCallDepth, MaxCallDepth)
	}
	if m.MaxConcurrency < 0 || m.MaxConcurrency > config.MaxConcurrency {
		add("max_concurrency", "%d out of range [0, %d]", m.MaxConcurrency, config.MaxConcurrency)
	}
	if m.MinInstances < 0 || m.MinInstances > config.MaxConcurrency {
		add("min_instances", "%d out of range [0, %d]", m.MinInstances, config.MaxConcurrency)
	} else if m.MaxConcurrency > 0 && m.MinInstances > m.MaxConcurrency {
		add("min_instances", "%d is more than max_concurrency %d", m.MinInstances, m.MaxConcurrency)
	}
	if m.IdleTimeout > config.Duration(config.MaxIdleTimeout) {
		add("idle_timeout", "%s longer than the cap %s", m.IdleTimeout, time.Duration(config.MaxIdleTimeout))
	}
	pats := m.Patterns()
	switch {
	case m.OrderBy == OrderTopic:
	case m.OrderBy == "":
		m.OrderBy = OrderTopic
		if len(pats) > 0 && allCapture(pats, "device") {
			m.OrderBy = "device"
		}
	case len(pats) == 0:
		add("order_by", "order_by %q needs mqtt triggers that capture {%s}", clip(m.OrderBy), clip(m.OrderBy))
	case !allCapture(pats, m.OrderBy):
		add("order_by", "every mqtt trigger must capture {%s} (or use order_by: topic)", clip(m.OrderBy))
	}
	return errors.Join(errs...)
}

// CheckWith reports the problems that appear only once the manifest is
// combined with the gateway's function defaults d (a zero manifest value
// means "the default"): min_instances above max_concurrency. The error
// wraps ErrManifest.
func (m *Manifest) CheckWith(d config.Functions) error {
	minI, maxC := m.MinInstances, m.MaxConcurrency
	if minI == 0 {
		minI = d.MinInstances
	}
	if maxC == 0 {
		maxC = d.MaxConcurrency
	}
	if minI > maxC {
		return fmt.Errorf("%w: function %s: min_instances %d is more than max_concurrency %d (after applying the gateway defaults)", ErrManifest, m.Name, minI, maxC)
	}
	return nil
}

func allCapture(ps []*Pattern, name string) bool {
	for _, p := range ps {
		if !p.Captures(name) {
			return false
		}
	}
	return true
}
