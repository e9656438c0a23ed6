import { readdir, readFile } from "node:fs/promises";

/**
 * Where a machine's cores went over an interval: CPU time per process from /proc (user and
 * system, all of its threads), put in named groups, and the machine's whole busy time from
 * /proc/stat, so what no group holds (the kernel's own threads, other programs) shows as well.
 * Linux only, like the benchmarks that use it.
 */

/** One process as /proc/<pid>/stat shows it. */
export interface ProcessCpu {
  ppid: number;
  name: string;
  /** CPU seconds (user and system) it has used so far. */
  seconds: number;
}

/** Clock ticks a second in /proc (USER_HZ, 100 on Linux). */
const TICK = 100;

/** Parses /proc/<pid>/stat; `comm` may hold spaces, so the fields after its ")" are split. */
function parseStat(stat: string): ProcessCpu {
  const close = stat.lastIndexOf(")");
  const fields = stat.slice(close + 2).split(" ");
  // ppid is field 4 of stat(5), utime and stime fields 14 and 15.
  return {
    name: stat.slice(stat.indexOf("(") + 1, close),
    ppid: Number(fields[1]),
    seconds: (Number(fields[11]) + Number(fields[12])) / TICK,
  };
}

/** One process's CPU and parent. */
export async function processCpu(pid: number): Promise<ProcessCpu> {
  return parseStat(await readFile(`/proc/${pid}/stat`, "utf8"));
}

/** Every process running now. */
export async function allProcesses(): Promise<Map<number, ProcessCpu>> {
  const out = new Map<number, ProcessCpu>();
  for (const entry of await readdir("/proc")) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      out.set(Number(entry), await processCpu(Number(entry)));
    } catch {
      // Gone meanwhile.
    }
  }
  return out;
}

/** Whether `pid` is `root` or runs below it. */
export function isWithin(processes: Map<number, ProcessCpu>, pid: number, root: number): boolean {
  for (let p: number | undefined = pid; p !== undefined && p > 1; p = processes.get(p)?.ppid)
    if (p === root) return true;
  return false;
}

/** The machine's busy CPU seconds so far, all cores (everything but idle and I/O wait). */
async function machineBusy(): Promise<number> {
  const cpu = (await readFile("/proc/stat", "utf8")).split("\n")[0] ?? "";
  const [user, nice, system, , , irq, softirq, steal] = cpu
    .trim()
    .split(/\s+/)
    .slice(1)
    .map(Number);
  return (
    ((user ?? 0) + (nice ?? 0) + (system ?? 0) + (irq ?? 0) + (softirq ?? 0) + (steal ?? 0)) / TICK
  );
}

export interface CpuSnapshot {
  machine: number;
  processes: Map<number, ProcessCpu>;
}

export async function cpuSnapshot(): Promise<CpuSnapshot> {
  return { machine: await machineBusy(), processes: await allProcesses() };
}

/**
 * Which group a process belongs to, or null for none: tried in order, the first that holds it
 * wins (so a group for a child process goes before one for its parent's whole tree).
 */
export type CpuGroup = [
  name: string,
  holds: (pid: number, processes: Map<number, ProcessCpu>) => boolean,
];

/**
 * CPU seconds each group used between two snapshots, `other` for the machine's busy time that
 * no group holds, and `machine` for all of it. A process that ended between them is not seen.
 */
export function cpuSplit(
  before: CpuSnapshot,
  after: CpuSnapshot,
  groups: CpuGroup[],
): Record<string, number> & { machine: number; other: number } {
  const out: Record<string, number> = Object.fromEntries(groups.map(([name]) => [name, 0]));
  let grouped = 0;
  for (const [pid, now] of after.processes) {
    const group = groups.find(([, holds]) => holds(pid, after.processes));
    if (!group) continue;
    const was = before.processes.get(pid);
    // The same pid with another parent or name is a new process: all its time is new.
    const used =
      was && was.ppid === now.ppid && was.name === now.name
        ? now.seconds - was.seconds
        : now.seconds;
    out[group[0]] = (out[group[0]] ?? 0) + used;
    grouped += used;
  }
  const machine = after.machine - before.machine;
  return { ...out, machine, other: Math.max(0, machine - grouped) };
}
