// Drives a running rzstack management node with the official ZStack Java SDK (org.zstack.sdk,
// compiled from a ZStack source checkout by scripts/sdk-check.sh; no SDK source lives in this
// repository). Builds a simulator topology, then exercises CreateVmInstance and the VM lifecycle.
//
// usage: java -cp <sdk classes>:<okhttp, okio, gson, commons-*>:. SdkCheck <host> <port> <qcow2 image path>
// Prints one PASS/FAIL line per check and exits 1 when any check failed.

import org.zstack.sdk.*;

import com.sun.net.httpserver.HttpServer;

import java.io.BufferedReader;
import java.io.PrintWriter;
import java.io.StringReader;
import java.io.StringWriter;
import java.lang.reflect.Proxy;
import java.net.InetSocketAddress;
import java.nio.charset.StandardCharsets;
import java.security.MessageDigest;
import java.sql.Timestamp;
import java.util.*;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicReference;
import java.util.function.Supplier;

public class SdkCheck {
    static final long GB = 1L << 30;
    static int passed = 0;
    static final List<String> failed = new ArrayList<>();
    static String session;

    static final class Abort extends RuntimeException {
        Abort(String m) {
            super(m);
        }
    }

    static void check(String what, boolean ok, Object detail) {
        if (ok) {
            passed++;
            System.out.println("PASS " + what);
        } else {
            failed.add(what + " -- " + detail);
            System.out.println("FAIL " + what + " -- " + detail);
        }
    }

    static void eq(String what, Object want, Object got) {
        check(what, Objects.equals(want, got), "want " + want + ", got " + got);
    }

    static String err(ErrorCode e) {
        return e == null ? "null" : "[" + e.code + "] " + e.description + " / " + e.details;
    }

    static Object field(Object o, String name) {
        try {
            return o.getClass().getField(name).get(o);
        } catch (ReflectiveOperationException e) {
            throw new RuntimeException(e);
        }
    }

    /** Calls an action; a thrown exception or an error is a FAIL and aborts; returns the result value. */
    static Object ok(String label, Supplier<Object> call) {
        Object res;
        try {
            res = call.get();
        } catch (Throwable t) {
            check(label, false, "SDK threw " + t);
            t.printStackTrace(System.out);
            throw new Abort(label);
        }
        ErrorCode e = (ErrorCode) field(res, "error");
        check(label, e == null, err(e));
        if (e != null) {
            throw new Abort(label);
        }
        return field(res, "value");
    }

    /** Calls an action that must fail; returns its error (null, and a FAIL, when it did not fail). */
    static ErrorCode fails(String label, Supplier<Object> call) {
        Object res;
        try {
            res = call.get();
        } catch (Throwable t) {
            check(label, false, "SDK threw " + t);
            return null;
        }
        ErrorCode e = (ErrorCode) field(res, "error");
        check(label + " fails", e != null, "no error, value " + field(res, "value"));
        return e;
    }

    static String sha512(String s) throws Exception {
        byte[] d = MessageDigest.getInstance("SHA-512").digest(s.getBytes(StandardCharsets.UTF_8));
        StringBuilder b = new StringBuilder();
        for (byte x : d) {
            b.append(String.format("%02x", x));
        }
        return b.toString();
    }

    static boolean recent(Timestamp t) {
        return t != null && Math.abs(t.getTime() - System.currentTimeMillis()) < 24L * 3600 * 1000;
    }

    static List<VmInstanceInventory> queryVms(String label, String... conds) {
        QueryVmInstanceAction q = new QueryVmInstanceAction();
        q.conditions = Arrays.asList(conds);
        q.sessionId = session;
        QueryVmInstanceResult r = (QueryVmInstanceResult) ok(label, q::call);
        List<VmInstanceInventory> out = new ArrayList<>();
        for (Object o : r.inventories) {
            if (!(o instanceof VmInstanceInventory)) {
                check(label + ": element is a VmInstanceInventory", false, o.getClass());
                throw new Abort(label);
            }
            out.add((VmInstanceInventory) o);
        }
        return out;
    }

    /** The checks every VM inventory returned by the SDK must pass. */
    static void checkVm(String p, VmInstanceInventory vm, String state) {
        checkVm(p, vm, state, true);
    }

    /** withIps false: a recovered VM's NICs have no IP until it starts (upstream returns them on destroy). */
    static void checkVm(String p, VmInstanceInventory vm, String state, boolean withIps) {
        check(p + ": uuid is 32 hex", vm.uuid != null && vm.uuid.matches("[0-9a-f]{32}"), vm.uuid);
        eq(p + ": state", state, vm.state);
        eq(p + ": type", "UserVm", vm.type);
        eq(p + ": hypervisorType", "Simulator", vm.hypervisorType);
        check(p + ": createDate parsed", recent(vm.createDate), vm.createDate);
        check(p + ": lastOpDate parsed", recent(vm.lastOpDate), vm.lastOpDate);
        check(p + ": rootVolumeUuid", vm.rootVolumeUuid != null, null);
        for (Object n : vm.vmNics) {
            if (!(n instanceof VmNicInventory)) {
                check(p + ": vmNics element is a VmNicInventory", false, n.getClass());
                continue;
            }
            VmNicInventory nic = (VmNicInventory) n;
            if (withIps) {
                check(p + ": nic ip", nic.ip != null && nic.ip.matches("\\d+\\.\\d+\\.\\d+\\.\\d+"), nic.ip);
            } else {
                check(p + ": nic without ip", nic.ip == null && nic.usedIps.isEmpty(), nic.ip);
            }
            check(p + ": nic mac", nic.mac != null && nic.mac.matches("([0-9a-f]{2}:){5}[0-9a-f]{2}"), nic.mac);
            eq(p + ": nic vmInstanceUuid", vm.uuid, nic.vmInstanceUuid);
            check(p + ": nic createDate parsed", recent(nic.createDate), nic.createDate);
            for (Object u : nic.usedIps) {
                check(p + ": usedIps element is a UsedIpInventory", u instanceof UsedIpInventory, u.getClass());
            }
        }
        boolean root = false;
        for (Object v : vm.allVolumes) {
            if (!(v instanceof VolumeInventory)) {
                check(p + ": allVolumes element is a VolumeInventory", false, v.getClass());
                continue;
            }
            VolumeInventory vol = (VolumeInventory) v;
            eq(p + ": volume vmInstanceUuid", vm.uuid, vol.vmInstanceUuid);
            check(p + ": volume createDate parsed", recent(vol.createDate), vol.createDate);
            if (vol.uuid.equals(vm.rootVolumeUuid)) {
                root = true;
                eq(p + ": root volume type", "Root", vol.type);
            }
        }
        check(p + ": allVolumes holds the root volume", root, vm.allVolumes.size());
        if (vm.vmCdRoms != null) {
            for (Object c : vm.vmCdRoms) {
                check(p + ": vmCdRoms element is a VmCdRomInventory", c instanceof VmCdRomInventory, c.getClass());
            }
        }
    }

    /** Minimal servlet request/response adapters so ZSClient.webHookCallback can be fed. */
    static Object servletProxy(Class<?> iface, Map<String, String> headers, String body, StringWriter out,
            AtomicReference<Integer> status) {
        return Proxy.newProxyInstance(SdkCheck.class.getClassLoader(), new Class<?>[] {iface}, (px, m, a) -> {
            switch (m.getName()) {
                case "getReader":
                    return new BufferedReader(new StringReader(body));
                case "getHeader":
                    return headers.get(((String) a[0]).toLowerCase(Locale.ROOT));
                case "setStatus":
                case "sendError":
                    status.set((Integer) a[0]);
                    return null;
                case "getWriter":
                    return new PrintWriter(out);
                default:
                    throw new UnsupportedOperationException(m.getName());
            }
        });
    }

    public static void main(String[] args) throws Exception {
        String host = args.length > 0 ? args[0] : "127.0.0.1";
        int port = args.length > 1 ? Integer.parseInt(args[1]) : 8080;
        String image = args.length > 2 ? args[2] : "/tmp/sdk-check.qcow2";
        ZSClient.configure(new ZSConfig.Builder()
                .setHostname(host)
                .setPort(port)
                .setContextPath("zstack")
                .setDefaultPollingInterval(200, TimeUnit.MILLISECONDS)
                .setDefaultPollingTimeout(120, TimeUnit.SECONDS)
                .build());
        try {
            run(image);
        } catch (Abort a) {
            System.out.println("ABORTED after " + a.getMessage());
        }
        System.out.println();
        System.out.println(passed + " passed, " + failed.size() + " failed");
        for (String f : failed) {
            System.out.println("  FAILED: " + f);
        }
        System.exit(failed.isEmpty() ? 0 : 1);
    }

    static void run(String image) throws Exception {
        // ---- login (sync API; SDK sends the password as given: SHA-512 hex like every upstream client)
        LogInByAccountAction bad = new LogInByAccountAction();
        bad.accountName = "admin";
        bad.password = sha512("wrong");
        ErrorCode be = fails("LogInByAccount wrong password", bad::call);
        if (be != null) {
            // a sync failure is a 503; the SDK reports any non-2xx of the first call as sdk.1000 with the body
            eq("LogInByAccount wrong password: SDK code", "sdk.1000", be.code);
            check("LogInByAccount wrong password: body carries ID.1000", be.details != null && be.details.contains("ID.1000"),
                    be.details);
        }
        LogInByAccountAction login = new LogInByAccountAction();
        login.accountName = "admin";
        login.password = sha512("password");
        LogInResult lr = (LogInResult) ok("LogInByAccount admin", login::call);
        session = lr.inventory.uuid;
        check("LogInByAccount: session uuid", session != null && session.matches("[0-9a-f]{32}"), session);
        check("LogInByAccount: expiredDate parsed", lr.inventory.expiredDate != null, lr.inventory.expiredDate);

        // ---- simulator topology, all through the SDK
        CreateZoneAction cz = new CreateZoneAction();
        cz.name = "sdk-zone";
        cz.sessionId = session;
        ZoneInventory zone = ((CreateZoneResult) ok("CreateZone", cz::call)).inventory;

        CreateClusterAction cc = new CreateClusterAction();
        cc.name = "sdk-cluster";
        cc.zoneUuid = zone.uuid;
        cc.hypervisorType = "Simulator";
        cc.sessionId = session;
        ClusterInventory cluster = ((CreateClusterResult) ok("CreateCluster", cc::call)).inventory;

        AddSimulatorHostAction ah = new AddSimulatorHostAction();
        ah.name = "sdk-host";
        ah.managementIp = "10.0.0.1";
        ah.clusterUuid = cluster.uuid;
        ah.cpuCapacity = 8;
        ah.memoryCapacity = 16 * GB;
        ah.sessionId = session;
        HostInventory hostInv = ((AddHostResult) ok("AddSimulatorHost", ah::call)).inventory;
        System.out.println("     host inventory class: " + hostInv.getClass().getName());

        AddSimulatorPrimaryStorageAction ap = new AddSimulatorPrimaryStorageAction();
        ap.name = "sdk-ps";
        ap.url = "/sim-ps";
        ap.zoneUuid = zone.uuid;
        ap.totalCapacity = 100 * GB;
        ap.availableCapacity = 100 * GB;
        ap.sessionId = session;
        PrimaryStorageInventory ps = ((AddPrimaryStorageResult) ok("AddSimulatorPrimaryStorage", ap::call)).inventory;

        AttachPrimaryStorageToClusterAction apc = new AttachPrimaryStorageToClusterAction();
        apc.clusterUuid = cluster.uuid;
        apc.primaryStorageUuid = ps.uuid;
        apc.sessionId = session;
        ok("AttachPrimaryStorageToCluster", apc::call);

        AddSimulatorBackupStorageAction ab = new AddSimulatorBackupStorageAction();
        ab.name = "sdk-bs";
        ab.url = "/sim-bs";
        ab.totalCapacity = 100 * GB;
        ab.availableCapacity = 100 * GB;
        ab.sessionId = session;
        BackupStorageInventory bs = ((AddBackupStorageResult) ok("AddSimulatorBackupStorage", ab::call)).inventory;

        AttachBackupStorageToZoneAction abz = new AttachBackupStorageToZoneAction();
        abz.zoneUuid = zone.uuid;
        abz.backupStorageUuid = bs.uuid;
        abz.sessionId = session;
        ok("AttachBackupStorageToZone", abz::call);

        AddImageAction ai = new AddImageAction();
        ai.name = "sdk-image";
        ai.url = "file://" + image;
        ai.format = "qcow2";
        ai.backupStorageUuids = Collections.singletonList(bs.uuid);
        ai.platform = "Linux";
        ai.guestOsType = "Ubuntu";
        ai.architecture = "x86_64";
        ai.sessionId = session;
        ImageInventory img = ((AddImageResult) ok("AddImage", ai::call)).inventory;

        CreateInstanceOfferingAction io = new CreateInstanceOfferingAction();
        io.name = "sdk-small";
        io.cpuNum = 1;
        io.memorySize = GB;
        io.sessionId = session;
        InstanceOfferingInventory offering = ((CreateInstanceOfferingResult) ok("CreateInstanceOffering", io::call)).inventory;

        CreateDiskOfferingAction dof = new CreateDiskOfferingAction();
        dof.name = "sdk-disk";
        dof.diskSize = GB;
        dof.sessionId = session;
        DiskOfferingInventory diskOffering = ((CreateDiskOfferingResult) ok("CreateDiskOffering", dof::call)).inventory;

        String[] l3 = new String[2];
        for (int i = 0; i < 2; i++) {
            CreateL2NoVlanNetworkAction l2a = new CreateL2NoVlanNetworkAction();
            l2a.name = "sdk-l2-" + i;
            l2a.zoneUuid = zone.uuid;
            l2a.physicalInterface = "eth" + i;
            l2a.sessionId = session;
            L2NetworkInventory l2 = ((CreateL2NetworkResult) ok("CreateL2NoVlanNetwork " + i, l2a::call)).inventory;

            AttachL2NetworkToClusterAction al = new AttachL2NetworkToClusterAction();
            al.l2NetworkUuid = l2.uuid;
            al.clusterUuid = cluster.uuid;
            al.sessionId = session;
            ok("AttachL2NetworkToCluster " + i, al::call);

            CreateL3NetworkAction l3a = new CreateL3NetworkAction();
            l3a.name = "sdk-l3-" + i;
            l3a.l2NetworkUuid = l2.uuid;
            l3a.sessionId = session;
            l3[i] = ((CreateL3NetworkResult) ok("CreateL3Network " + i, l3a::call)).inventory.uuid;

            AddIpRangeAction ir = new AddIpRangeAction();
            ir.l3NetworkUuid = l3[i];
            ir.name = "sdk-range-" + i;
            ir.startIp = "192.168." + (10 + i) + ".10";
            ir.endIp = "192.168." + (10 + i) + ".50";
            ir.netmask = "255.255.255.0";
            ir.gateway = "192.168." + (10 + i) + ".1";
            ir.sessionId = session;
            ok("AddIpRange " + i, ir::call);
        }

        // ---- CreateVmInstance: the "Done when"
        CreateVmInstanceAction cv = new CreateVmInstanceAction();
        cv.name = "sdk-vm";
        cv.description = "made by the official Java SDK";
        cv.instanceOfferingUuid = offering.uuid;
        cv.imageUuid = img.uuid;
        cv.l3NetworkUuids = Arrays.asList(l3[0], l3[1]);
        cv.defaultL3NetworkUuid = l3[1];
        cv.dataDiskOfferingUuids = Collections.singletonList(diskOffering.uuid);
        cv.dataDiskSizes = Collections.singletonList(2 * GB);
        cv.strategy = "InstantStart";
        cv.systemTags = Collections.singletonList("staticIp::" + l3[0] + "::192.168.10.20");
        cv.sessionId = session;
        VmInstanceInventory vm = ((CreateVmInstanceResult) ok("CreateVmInstance", cv::call)).inventory;
        checkVm("CreateVmInstance", vm, "Running");
        eq("CreateVmInstance: name", "sdk-vm", vm.name);
        eq("CreateVmInstance: description", cv.description, vm.description);
        eq("CreateVmInstance: zoneUuid", zone.uuid, vm.zoneUuid);
        eq("CreateVmInstance: clusterUuid", cluster.uuid, vm.clusterUuid);
        eq("CreateVmInstance: hostUuid", hostInv.uuid, vm.hostUuid);
        eq("CreateVmInstance: imageUuid", img.uuid, vm.imageUuid);
        eq("CreateVmInstance: instanceOfferingUuid", offering.uuid, vm.instanceOfferingUuid);
        eq("CreateVmInstance: cpuNum", 1, vm.cpuNum);
        eq("CreateVmInstance: memorySize", GB, vm.memorySize);
        eq("CreateVmInstance: defaultL3NetworkUuid", l3[1], vm.defaultL3NetworkUuid);
        eq("CreateVmInstance: platform", "Linux", vm.platform);
        eq("CreateVmInstance: 2 nics", 2, vm.vmNics.size());
        eq("CreateVmInstance: root + 2 data volumes", 3, vm.allVolumes.size());
        String staticNicIp = null;
        for (Object n : vm.vmNics) {
            if (n instanceof VmNicInventory && l3[0].equals(((VmNicInventory) n).l3NetworkUuid)) {
                staticNicIp = ((VmNicInventory) n).ip;
            }
        }
        eq("CreateVmInstance: staticIp system tag honoured", "192.168.10.20", staticNicIp);
        List<Long> dataSizes = new ArrayList<>();
        for (Object v : vm.allVolumes) {
            if (v instanceof VolumeInventory && "Data".equals(((VolumeInventory) v).type)) {
                dataSizes.add(((VolumeInventory) v).size);
            }
        }
        Collections.sort(dataSizes);
        eq("CreateVmInstance: data volume sizes (offering, dataDiskSizes)", Arrays.asList(GB, 2 * GB), dataSizes);
        int fromOffering = 0;
        for (Object v : vm.allVolumes) {
            if (v instanceof VolumeInventory && diskOffering.uuid.equals(((VolumeInventory) v).diskOfferingUuid)) {
                fromOffering++;
            }
        }
        eq("CreateVmInstance: one data volume carries diskOfferingUuid", 1, fromOffering);

        // ---- failing creates: the job ends 503 and the SDK parses the upstream error
        int before = queryVms("QueryVmInstance (count before failing create)").size();
        CreateVmInstanceAction bi = new CreateVmInstanceAction();
        bi.name = "no-image";
        bi.instanceOfferingUuid = offering.uuid;
        bi.imageUuid = "0123456789abcdef0123456789abcdef";
        bi.l3NetworkUuids = Collections.singletonList(l3[0]);
        bi.sessionId = session;
        ErrorCode ne = fails("CreateVmInstance with a missing image", bi::call);
        if (ne != null) {
            eq("CreateVmInstance missing image: code", "SYS.1003", ne.code);
            System.out.println("     error: " + err(ne));
        }
        CreateVmInstanceAction bo = new CreateVmInstanceAction();
        bo.name = "no-l3";
        bo.instanceOfferingUuid = offering.uuid;
        bo.imageUuid = img.uuid;
        bo.sessionId = session;
        ErrorCode le = fails("CreateVmInstance without l3NetworkUuids", bo::call);
        if (le != null) {
            System.out.println("     error: " + err(le));
            check("CreateVmInstance without l3NetworkUuids: an upstream code", le.code != null && le.code.matches("[A-Z0-9]+\\.\\d+"),
                    le.code);
        }
        CreateVmInstanceAction big = new CreateVmInstanceAction();
        big.name = "too-big";
        big.cpuNum = 1;
        big.memorySize = 64 * GB;
        big.imageUuid = img.uuid;
        big.l3NetworkUuids = Collections.singletonList(l3[0]);
        big.sessionId = session;
        ErrorCode ce = fails("CreateVmInstance beyond host memory", big::call);
        if (ce != null) {
            System.out.println("     error: " + err(ce) + " cause " + err(ce.cause));
            eq("CreateVmInstance beyond host memory: code", "SYS.1006", ce.code);
            eq("CreateVmInstance beyond host memory: cause code", "HOST_ALLOCATION.1000", ce.cause == null ? null : ce.cause.code);
        }
        eq("failing creates leave no VM", before, queryVms("QueryVmInstance (count after failing creates)").size());
        CreateVmInstanceAction bs2 = new CreateVmInstanceAction();
        bs2.name = "bad-session";
        bs2.instanceOfferingUuid = offering.uuid;
        bs2.imageUuid = img.uuid;
        bs2.l3NetworkUuids = Collections.singletonList(l3[0]);
        bs2.sessionId = "0123456789abcdef0123456789abcdef";
        ErrorCode se = fails("CreateVmInstance with an unknown session", bs2::call);
        if (se != null) {
            eq("CreateVmInstance unknown session: code", "ID.1001", se.code);
        }

        // ---- X-Job-UUID from apiId: the job uuid is the caller's; reusing it is refused (400 -> sdk.1000)
        String apiId = UUID.randomUUID().toString().replace("-", "");
        CreateZoneAction z1 = new CreateZoneAction();
        z1.name = "sdk-apiid-zone";
        z1.apiId = apiId;
        z1.apiTimeout = 60000L;
        z1.sessionId = session;
        ok("CreateZone with apiId and apiTimeout", z1::call);
        CreateZoneAction z2 = new CreateZoneAction();
        z2.name = "sdk-apiid-zone-again";
        z2.apiId = apiId;
        z2.sessionId = session;
        ErrorCode dup = fails("CreateZone reusing an apiId", z2::call);
        if (dup != null) {
            eq("CreateZone reusing an apiId: SDK code", "sdk.1000", dup.code);
            check("CreateZone reusing an apiId: body names the duplicate job",
                    dup.details != null && dup.details.contains(apiId), dup.details);
        }

        // ---- QueryVmInstance with conditions
        List<VmInstanceInventory> q = queryVms("QueryVmInstance name=", "name=sdk-vm");
        eq("QueryVmInstance name=: one VM", 1, q.size());
        if (q.size() == 1) {
            checkVm("QueryVmInstance", q.get(0), "Running");
            eq("QueryVmInstance: same uuid", vm.uuid, q.get(0).uuid);
        }
        eq("QueryVmInstance vmNics.ip=", 1, queryVms("QueryVmInstance vmNics.ip=", "vmNics.ip=192.168.10.20").size());
        eq("QueryVmInstance state=Running,hypervisorType=Simulator", 1,
                queryVms("QueryVmInstance two conditions", "state=Running", "hypervisorType=Simulator").size());
        eq("QueryVmInstance name~=", 1, queryVms("QueryVmInstance name~=", "name~=sdk-%").size());
        eq("QueryVmInstance state=Stopped", 0, queryVms("QueryVmInstance state=Stopped", "state=Stopped").size());
        eq("QueryVmInstance uuid?=", 1,
                queryVms("QueryVmInstance uuid?=", "uuid?=" + vm.uuid + ",0123456789abcdef0123456789abcdef").size());
        QueryVmInstanceAction qc = new QueryVmInstanceAction();
        qc.conditions = new ArrayList<>();
        qc.replyWithCount = true;
        qc.limit = 1;
        qc.sortBy = "createDate";
        qc.sortDirection = "desc";
        qc.sessionId = session;
        QueryVmInstanceResult qcr = (QueryVmInstanceResult) ok("QueryVmInstance replyWithCount+limit+sort", qc::call);
        eq("QueryVmInstance replyWithCount: total", 1L, qcr.total);
        QueryVmInstanceAction qn = new QueryVmInstanceAction();
        qn.conditions = Collections.singletonList("name=sdk-vm");
        qn.count = true;
        qn.sessionId = session;
        QueryVmInstanceResult qnr = (QueryVmInstanceResult) ok("QueryVmInstance count=true", qn::call);
        eq("QueryVmInstance count=true: total", 1L, qnr.total);
        check("QueryVmInstance count=true: no inventories", qnr.inventories == null || qnr.inventories.isEmpty(),
                qnr.inventories);
        QueryVmInstanceAction qs = new QueryVmInstanceAction();
        qs.conditions = new ArrayList<>();
        qs.start = 1;
        qs.sessionId = session;
        QueryVmInstanceResult qsr = (QueryVmInstanceResult) ok("QueryVmInstance start=1", qs::call);
        eq("QueryVmInstance start=1: no VM left", 0, qsr.inventories.size());
        QueryVmInstanceAction qf = new QueryVmInstanceAction();
        qf.conditions = Collections.singletonList("uuid=" + vm.uuid);
        qf.fields = Arrays.asList("uuid", "name");
        qf.sessionId = session;
        QueryVmInstanceResult qfr = (QueryVmInstanceResult) ok("QueryVmInstance fields=uuid,name", qf::call);
        if (qfr.inventories.size() == 1 && qfr.inventories.get(0) instanceof VmInstanceInventory) {
            VmInstanceInventory f = (VmInstanceInventory) qfr.inventories.get(0);
            check("QueryVmInstance fields: only uuid and name", "sdk-vm".equals(f.name) && f.state == null, f.state);
        } else {
            check("QueryVmInstance fields: one VmInstanceInventory", false, qfr.inventories);
        }
        QueryVmInstanceAction qbad = new QueryVmInstanceAction();
        qbad.conditions = Collections.singletonList("noSuchField=1");
        qbad.sessionId = session;
        ErrorCode qe = fails("QueryVmInstance on an unknown field", qbad::call);
        if (qe != null) {
            eq("QueryVmInstance unknown field: SDK code (sync 503)", "sdk.1000", qe.code);
        }
        QueryVolumeAction qv = new QueryVolumeAction();
        qv.conditions = Collections.singletonList("vmInstanceUuid=" + vm.uuid);
        qv.sessionId = session;
        QueryVolumeResult qvr = (QueryVolumeResult) ok("QueryVolume vmInstanceUuid=", qv::call);
        eq("QueryVolume: 3 volumes", 3, qvr.inventories.size());
        check("QueryVolume: elements are VolumeInventory",
                !qvr.inventories.isEmpty() && qvr.inventories.get(0) instanceof VolumeInventory, qvr.inventories);

        // ---- lifecycle
        StopVmInstanceAction stop = new StopVmInstanceAction();
        stop.uuid = vm.uuid;
        stop.sessionId = session;
        VmInstanceInventory stopped = ((StopVmInstanceResult) ok("StopVmInstance", stop::call)).inventory;
        checkVm("StopVmInstance", stopped, "Stopped");
        check("StopVmInstance: hostUuid cleared", stopped.hostUuid == null, stopped.hostUuid);
        eq("StopVmInstance: lastHostUuid", hostInv.uuid, stopped.lastHostUuid);

        StartVmInstanceAction start = new StartVmInstanceAction();
        start.uuid = vm.uuid;
        start.sessionId = session;
        VmInstanceInventory started = ((StartVmInstanceResult) ok("StartVmInstance", start::call)).inventory;
        checkVm("StartVmInstance", started, "Running");
        eq("StartVmInstance: hostUuid", hostInv.uuid, started.hostUuid);

        RebootVmInstanceAction reboot = new RebootVmInstanceAction();
        reboot.uuid = vm.uuid;
        reboot.sessionId = session;
        checkVm("RebootVmInstance", ((RebootVmInstanceResult) ok("RebootVmInstance", reboot::call)).inventory, "Running");

        // ---- snapshot of the root volume, then a VM from it
        CreateVolumeSnapshotAction snap = new CreateVolumeSnapshotAction();
        snap.volumeUuid = vm.rootVolumeUuid;
        snap.name = "sdk-snap";
        snap.sessionId = session;
        VolumeSnapshotInventory sn = ((CreateVolumeSnapshotResult) ok("CreateVolumeSnapshot", snap::call)).inventory;
        eq("CreateVolumeSnapshot: volumeUuid", vm.rootVolumeUuid, sn.volumeUuid);
        check("CreateVolumeSnapshot: createDate parsed", recent(sn.createDate), sn.createDate);

        CreateVmInstanceFromVolumeSnapshotAction fs = new CreateVmInstanceFromVolumeSnapshotAction();
        fs.name = "sdk-from-snap";
        fs.volumeSnapshotUuid = sn.uuid;
        fs.instanceOfferingUuid = offering.uuid;
        fs.l3NetworkUuids = Collections.singletonList(l3[0]);
        fs.sessionId = session;
        VmInstanceInventory fromSnap =
                ((CreateVmInstanceFromVolumeSnapshotResult) ok("CreateVmInstanceFromVolumeSnapshot", fs::call)).inventory;
        checkVm("CreateVmInstanceFromVolumeSnapshot", fromSnap, "Running");
        eq("CreateVmInstanceFromVolumeSnapshot: 1 nic", 1, fromSnap.vmNics.size());

        // ---- the SDK's asynchronous call(Completion) (Timer-driven polling)
        CreateVmInstanceAction ac = new CreateVmInstanceAction();
        ac.name = "sdk-async";
        ac.instanceOfferingUuid = offering.uuid;
        ac.imageUuid = img.uuid;
        ac.l3NetworkUuids = Collections.singletonList(l3[1]);
        ac.sessionId = session;
        CountDownLatch latch = new CountDownLatch(1);
        AtomicReference<CreateVmInstanceAction.Result> got = new AtomicReference<>();
        ac.call(r -> {
            got.set(r);
            latch.countDown();
        });
        check("CreateVmInstance call(Completion) completes", latch.await(120, TimeUnit.SECONDS), "no completion in 120 s");
        CreateVmInstanceAction.Result ar = got.get();
        VmInstanceInventory asyncVm = null;
        if (ar != null) {
            check("CreateVmInstance call(Completion): no error", ar.error == null, err(ar.error));
            if (ar.value != null && ar.value.inventory != null) {
                asyncVm = ar.value.inventory;
                checkVm("CreateVmInstance call(Completion)", asyncVm, "Running");
            }
        }
        // async failure through the Completion path
        CreateVmInstanceAction af = new CreateVmInstanceAction();
        af.name = "sdk-async-bad";
        af.instanceOfferingUuid = offering.uuid;
        af.imageUuid = "0123456789abcdef0123456789abcdef";
        af.l3NetworkUuids = Collections.singletonList(l3[1]);
        af.sessionId = session;
        CountDownLatch latch2 = new CountDownLatch(1);
        AtomicReference<CreateVmInstanceAction.Result> got2 = new AtomicReference<>();
        af.call(r -> {
            got2.set(r);
            latch2.countDown();
        });
        check("failing CreateVmInstance call(Completion) completes", latch2.await(120, TimeUnit.SECONDS), "timeout");
        if (got2.get() != null) {
            eq("failing CreateVmInstance call(Completion): code", "SYS.1003",
                    got2.get().error == null ? null : got2.get().error.code);
        }

        // ---- web hook: the server POSTs the result; ZSClient.webHookCallback wakes the caller
        webHook(offering.uuid, l3[0]);

        // ---- more VM and volume APIs
        VmInstanceInventory other = moreApis(l3[0], img.uuid, ps.uuid, diskOffering.uuid, sn.uuid);

        // ---- destroy and expunge
        for (VmInstanceInventory v : Arrays.asList(vm, fromSnap, asyncVm, other)) {
            if (v == null) {
                continue;
            }
            DestroyVmInstanceAction d = new DestroyVmInstanceAction();
            d.uuid = v.uuid;
            d.sessionId = session;
            ok("DestroyVmInstance " + v.name, d::call);
            List<VmInstanceInventory> after = queryVms("QueryVmInstance after destroy", "uuid=" + v.uuid);
            eq("DestroyVmInstance " + v.name + ": state", "Destroyed", after.isEmpty() ? null : after.get(0).state);
            ExpungeVmInstanceAction x = new ExpungeVmInstanceAction();
            x.uuid = v.uuid;
            x.sessionId = session;
            ok("ExpungeVmInstance " + v.name, x::call);
            eq("ExpungeVmInstance " + v.name + ": gone", 0, queryVms("QueryVmInstance after expunge", "uuid=" + v.uuid).size());
        }
        DestroyVmInstanceAction again = new DestroyVmInstanceAction();
        again.uuid = vm.uuid;
        again.sessionId = session;
        ok("DestroyVmInstance of an expunged VM (success_if_missing)", again::call);

        // ---- logout: the session is gone afterwards
        LogOutAction lo = new LogOutAction();
        lo.sessionUuid = session;
        ok("LogOut", lo::call);
        QueryVmInstanceAction after = new QueryVmInstanceAction();
        after.sessionId = session;
        ErrorCode ae = fails("QueryVmInstance after LogOut", after::call);
        if (ae != null) {
            check("QueryVmInstance after LogOut: body carries ID.1001", ae.details != null && ae.details.contains("ID.1001"),
                    ae.details);
        }
    }

    /** CreateStopped without an offering, UpdateVmInstance, Recover, JustCreate, QueryVmNic, data volumes, snapshots. */
    static VmInstanceInventory moreApis(String l3, String image, String ps, String diskOffering, String snapshot) {
        CreateVmInstanceAction cs = new CreateVmInstanceAction();
        cs.name = "sdk-stopped";
        cs.cpuNum = 2;
        cs.memorySize = 2 * GB;
        cs.imageUuid = image;
        cs.l3NetworkUuids = Collections.singletonList(l3);
        cs.strategy = "CreateStopped";
        cs.sessionId = session;
        VmInstanceInventory v = ((CreateVmInstanceResult) ok("CreateVmInstance CreateStopped, cpuNum/memorySize", cs::call)).inventory;
        checkVm("CreateVmInstance CreateStopped", v, "Stopped");
        eq("CreateVmInstance CreateStopped: cpuNum", 2, v.cpuNum);
        eq("CreateVmInstance CreateStopped: memorySize", 2 * GB, v.memorySize);
        check("CreateVmInstance CreateStopped: no instanceOfferingUuid", v.instanceOfferingUuid == null, v.instanceOfferingUuid);

        UpdateVmInstanceAction up = new UpdateVmInstanceAction();
        up.uuid = v.uuid;
        up.name = "sdk-stopped-renamed";
        up.description = "updated";
        up.cpuNum = 1;
        up.sessionId = session;
        VmInstanceInventory u = ((UpdateVmInstanceResult) ok("UpdateVmInstance", up::call)).inventory;
        checkVm("UpdateVmInstance", u, "Stopped");
        eq("UpdateVmInstance: name", "sdk-stopped-renamed", u.name);
        eq("UpdateVmInstance: description", "updated", u.description);
        eq("UpdateVmInstance: cpuNum", 1, u.cpuNum);

        DestroyVmInstanceAction d = new DestroyVmInstanceAction();
        d.uuid = v.uuid;
        d.sessionId = session;
        ok("DestroyVmInstance (to recover)", d::call);
        RecoverVmInstanceAction rc = new RecoverVmInstanceAction();
        rc.uuid = v.uuid;
        rc.sessionId = session;
        VmInstanceInventory r = ((RecoverVmInstanceResult) ok("RecoverVmInstance", rc::call)).inventory;
        checkVm("RecoverVmInstance", r, "Stopped", false);
        StartVmInstanceAction st = new StartVmInstanceAction();
        st.uuid = v.uuid;
        st.sessionId = session;
        checkVm("StartVmInstance after recover", ((StartVmInstanceResult) ok("StartVmInstance after recover", st::call)).inventory,
                "Running");

        CreateVmInstanceAction jc = new CreateVmInstanceAction();
        jc.name = "sdk-just-create";
        jc.cpuNum = 1;
        jc.memorySize = GB;
        jc.imageUuid = image;
        jc.l3NetworkUuids = Collections.singletonList(l3);
        jc.strategy = "JustCreate";
        jc.sessionId = session;
        VmInstanceInventory j = ((CreateVmInstanceResult) ok("CreateVmInstance JustCreate", jc::call)).inventory;
        System.out.println("     JustCreate state: " + j.state + ", volumes " + j.allVolumes.size() + ", nics " + j.vmNics.size());
        DestroyVmInstanceAction jd = new DestroyVmInstanceAction();
        jd.uuid = j.uuid;
        jd.sessionId = session;
        ok("DestroyVmInstance JustCreate VM", jd::call);
        // upstream deletes a VM in state Created from the database at once (deletion policy DBOnly)
        eq("DestroyVmInstance JustCreate VM: removed at once", 0,
                queryVms("QueryVmInstance after destroying a Created VM", "uuid=" + j.uuid).size());
        ExpungeVmInstanceAction jx = new ExpungeVmInstanceAction();
        jx.uuid = j.uuid;
        jx.sessionId = session;
        ErrorCode jxe = fails("ExpungeVmInstance of a removed Created VM", jx::call);
        if (jxe != null) {
            eq("ExpungeVmInstance of a removed Created VM: code", "SYS.1003", jxe.code);
        }

        QueryVmNicAction qn = new QueryVmNicAction();
        qn.conditions = Collections.singletonList("vmInstanceUuid=" + v.uuid);
        qn.sessionId = session;
        QueryVmNicResult nr = (QueryVmNicResult) ok("QueryVmNic vmInstanceUuid=", qn::call);
        eq("QueryVmNic: one nic", 1, nr.inventories.size());
        if (nr.inventories.size() == 1) {
            Object n = nr.inventories.get(0);
            check("QueryVmNic: element is a VmNicInventory", n instanceof VmNicInventory, n.getClass());
            if (n instanceof VmNicInventory) {
                for (Object ip : ((VmNicInventory) n).usedIps) {
                    check("QueryVmNic: usedIps element is a UsedIpInventory", ip instanceof UsedIpInventory, ip.getClass());
                }
            }
        }

        CreateDataVolumeAction cd = new CreateDataVolumeAction();
        cd.name = "sdk-data";
        cd.diskOfferingUuid = diskOffering;
        cd.primaryStorageUuid = ps;
        cd.sessionId = session;
        VolumeInventory dv = ((CreateDataVolumeResult) ok("CreateDataVolume", cd::call)).inventory;
        eq("CreateDataVolume: type", "Data", dv.type);
        eq("CreateDataVolume: size", GB, dv.size);
        check("CreateDataVolume: createDate parsed", recent(dv.createDate), dv.createDate);
        DeleteDataVolumeAction dd = new DeleteDataVolumeAction();
        dd.uuid = dv.uuid;
        dd.sessionId = session;
        ok("DeleteDataVolume", dd::call);
        ExpungeDataVolumeAction xd = new ExpungeDataVolumeAction();
        xd.uuid = dv.uuid;
        xd.sessionId = session;
        ok("ExpungeDataVolume", xd::call);

        QueryVolumeSnapshotAction qs = new QueryVolumeSnapshotAction();
        qs.conditions = Collections.singletonList("uuid=" + snapshot);
        qs.sessionId = session;
        QueryVolumeSnapshotResult sr = (QueryVolumeSnapshotResult) ok("QueryVolumeSnapshot uuid=", qs::call);
        eq("QueryVolumeSnapshot: one", 1, sr.inventories.size());
        check("QueryVolumeSnapshot: element is a VolumeSnapshotInventory",
                sr.inventories.size() == 1 && sr.inventories.get(0) instanceof VolumeSnapshotInventory, sr.inventories);
        DeleteVolumeSnapshotAction ds = new DeleteVolumeSnapshotAction();
        ds.uuid = snapshot;
        ds.sessionId = session;
        ok("DeleteVolumeSnapshot", ds::call);
        QueryVolumeSnapshotAction qs2 = new QueryVolumeSnapshotAction();
        qs2.conditions = Collections.singletonList("uuid=" + snapshot);
        qs2.sessionId = session;
        eq("DeleteVolumeSnapshot: gone", 0,
                ((QueryVolumeSnapshotResult) ok("QueryVolumeSnapshot after delete", qs2::call)).inventories.size());
        return v;
    }

    static void webHook(String offering, String l3) throws Exception {
        HttpServer hs = HttpServer.create(new InetSocketAddress("127.0.0.1", 0), 0);
        AtomicReference<Integer> status = new AtomicReference<>();
        hs.createContext("/hook", ex -> {
            Map<String, String> h = new HashMap<>();
            for (Map.Entry<String, List<String>> e : ex.getRequestHeaders().entrySet()) {
                h.put(e.getKey().toLowerCase(Locale.ROOT), e.getValue().get(0));
            }
            String body = new String(ex.getRequestBody().readAllBytes(), StandardCharsets.UTF_8);
            StringWriter w = new StringWriter();
            Object req = servletProxy(javax.servlet.http.HttpServletRequest.class, h, body, w, status);
            Object rsp = servletProxy(javax.servlet.http.HttpServletResponse.class, h, body, w, status);
            try {
                ZSClient.webHookCallback((javax.servlet.http.HttpServletRequest) req,
                        (javax.servlet.http.HttpServletResponse) rsp);
            } catch (Throwable t) {
                System.out.println("     webHookCallback threw " + t);
                status.set(500);
            }
            ex.sendResponseHeaders(status.get() == null ? 500 : status.get(), -1);
            ex.close();
        });
        hs.start();
        String url = "http://127.0.0.1:" + hs.getAddress().getPort() + "/hook";
        ZSConfig saved = ZSClient.getConfig();
        ZSClient.configure(new ZSConfig.Builder()
                .setHostname(saved.getHostname())
                .setPort(saved.getPort())
                .setContextPath("zstack")
                .setWebHook(url)
                .setDefaultPollingTimeout(60, TimeUnit.SECONDS)
                .build());
        try {
            CreateZoneAction cz = new CreateZoneAction();
            cz.name = "sdk-webhook-zone";
            cz.sessionId = session;
            ZoneInventory z = ((CreateZoneResult) ok("CreateZone via web hook", cz::call)).inventory;
            eq("CreateZone via web hook: name", "sdk-webhook-zone", z.name);
            // the caller is woken inside webHookCallback, before it sets the status
            for (int i = 0; i < 50 && status.get() == null; i++) {
                Thread.sleep(100);
            }
            eq("web hook callback answered 200", 200, status.get());
            CreateVmInstanceAction bi = new CreateVmInstanceAction();
            bi.name = "no-image-webhook";
            bi.instanceOfferingUuid = offering;
            bi.imageUuid = "0123456789abcdef0123456789abcdef";
            bi.l3NetworkUuids = Collections.singletonList(l3);
            bi.sessionId = session;
            ErrorCode e = fails("CreateVmInstance with a missing image via web hook", bi::call);
            if (e != null) {
                eq("CreateVmInstance missing image via web hook: code", "SYS.1003", e.code);
            }
            // web hook + call(Completion): the completion runs from webHookCallback
            CreateZoneAction cz2 = new CreateZoneAction();
            cz2.name = "sdk-webhook-async-zone";
            cz2.sessionId = session;
            CountDownLatch latch = new CountDownLatch(1);
            AtomicReference<CreateZoneAction.Result> got = new AtomicReference<>();
            cz2.call(r -> {
                got.set(r);
                latch.countDown();
            });
            check("CreateZone via web hook with call(Completion) completes", latch.await(60, TimeUnit.SECONDS), "timeout");
            CreateZoneAction.Result r = got.get();
            check("CreateZone via web hook with call(Completion): inventory",
                    r != null && r.error == null && r.value != null && "sdk-webhook-async-zone".equals(r.value.inventory.name),
                    r == null ? null : err(r.error));
        } catch (Abort a) {
            // recorded already
        } finally {
            ZSClient.configure(saved);
            hs.stop(0);
        }
    }
}
