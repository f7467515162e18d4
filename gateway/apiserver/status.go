package apiserver

import (
	"context"
	"runtime"
	"sort"
	"time"

	"github.com/shirou/gopsutil/v4/cpu"
	"github.com/shirou/gopsutil/v4/disk"
	"github.com/shirou/gopsutil/v4/host"
	"github.com/shirou/gopsutil/v4/mem"
	"github.com/shirou/gopsutil/v4/sensors"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	v1 "github.com/moongate-edge/moongate/api/moongate/v1"
)

// SystemInfo is what the system status reports besides the machine's own
// figures.
type SystemInfo struct {
	Version   string
	GatewayID string
	DataDir   string // its file system is reported
	// Counters returns the gateway's counters (may be nil).
	Counters func() *v1.GatewayCounters
}

type systemSampler struct {
	info    SystemInfo
	started time.Time
}

func newSystemSampler(info SystemInfo) *systemSampler {
	// The first cpu.Percent(0) call only takes a reference sample.
	_, _ = cpu.Percent(0, false)
	return &systemSampler{info: info, started: time.Now()}
}

// status gathers the system status. A figure the machine does not expose
// is left out (zero) rather than failing the call.
func (s *systemSampler) status(ctx context.Context) *v1.SystemStatus {
	out := &v1.SystemStatus{
		Version: s.info.Version, GatewayId: s.info.GatewayID,
		ProcessUptime: durationpb.New(time.Since(s.started).Truncate(time.Second)),
		CpuCount:      int32(runtime.NumCPU()),
	}
	if up, err := host.UptimeWithContext(ctx); err == nil {
		out.Uptime = durationpb.New(time.Duration(up) * time.Second)
	}
	// Percent with interval 0 compares with the previous call: it never
	// blocks (see PITFALLS.md).
	if p, err := cpu.PercentWithContext(ctx, 0, false); err == nil && len(p) == 1 {
		out.CpuPercent = p[0]
	}
	if vm, err := mem.VirtualMemoryWithContext(ctx); err == nil {
		out.Memory = &v1.Memory{TotalBytes: vm.Total, AvailableBytes: vm.Available, UsedPercent: vm.UsedPercent}
	}
	if s.info.DataDir != "" {
		if du, err := disk.UsageWithContext(ctx, s.info.DataDir); err == nil {
			out.Disk = &v1.Disk{Path: s.info.DataDir, TotalBytes: du.Total, FreeBytes: du.Free, UsedPercent: du.UsedPercent}
		}
	}
	// Temperatures: partial results come with an error; keep what came.
	temps, _ := sensors.TemperaturesWithContext(ctx)
	for _, t := range temps {
		if t.Temperature == 0 {
			continue
		}
		out.Temperatures = append(out.Temperatures, &v1.Temperature{Sensor: t.SensorKey, Celsius: t.Temperature})
	}
	sort.Slice(out.Temperatures, func(i, j int) bool { return out.Temperatures[i].Sensor < out.Temperatures[j].Sensor })
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	out.ProcessHeapBytes = ms.HeapInuse
	if s.info.Counters != nil {
		out.Gateway = s.info.Counters()
	}
	return out
}

type statusService struct {
	v1.UnimplementedStatusServiceServer
	s *Server
}

func (st *statusService) GetSyncStatus(ctx context.Context, _ *v1.GetSyncStatusRequest) (*v1.SyncStatus, error) {
	ts, err := st.s.cfg.Sync.SyncStatus(ctx)
	if err != nil {
		return nil, err
	}
	sort.Slice(ts, func(i, j int) bool { return ts[i].Name < ts[j].Name })
	out := &v1.SyncStatus{Targets: make([]*v1.SyncTarget, 0, len(ts))}
	for _, t := range ts {
		m := &v1.SyncTarget{
			Name: t.Name, Kind: t.Kind, Connected: t.Connected, BacklogRecords: t.BacklogRecords, BacklogBytes: t.BacklogBytes,
			OldestPendingAge: durationpb.New(t.OldestPendingAge), DeliveredTotal: t.DeliveredTotal,
			DeliveredPerSecond: t.DeliveredPerSecond, DroppedByQuota: t.DroppedByQuota, LastError: validText(t.LastError),
			BlobsPending: t.BlobsPending, BlobBytesPending: t.BlobBytesPending, BlobsDelivered: t.BlobsDelivered,
			BlobsFailed: t.BlobsFailed, BlobsDropped: t.BlobsDropped,
		}
		if !t.LastErrorTime.IsZero() {
			m.LastErrorTime = timestamppb.New(t.LastErrorTime)
		}
		out.Targets = append(out.Targets, m)
	}
	return out, nil
}

func (st *statusService) GetSystemStatus(ctx context.Context, _ *v1.GetSystemStatusRequest) (*v1.SystemStatus, error) {
	return st.s.sys.status(ctx), nil
}
