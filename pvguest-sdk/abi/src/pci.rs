//! PCI configuration space: the register offsets, bits and capability
//! layouts (PCI Local Bus 3.0, type 0 and type 1 headers) that the
//! hypervisor's filter and guests' drivers both name. Machine definitions,
//! kept here so that they are written once.

/// Registers of the common header (both header types).
pub mod reg {
    /// Vendor id (16 bits; all ones: no function there).
    pub const VENDOR_ID: u16 = 0x00;
    /// Device id (16 bits).
    pub const DEVICE_ID: u16 = 0x02;
    /// Command register (16 bits): [`super::command`].
    pub const COMMAND: u16 = 0x04;
    /// Status register (16 bits): [`super::status`].
    pub const STATUS: u16 = 0x06;
    /// Revision id (8 bits).
    pub const REVISION: u16 = 0x08;
    /// Programming interface (8 bits).
    pub const PROG_IF: u16 = 0x09;
    /// Subclass (8 bits).
    pub const SUBCLASS: u16 = 0x0a;
    /// Class code (8 bits).
    pub const CLASS: u16 = 0x0b;
    /// Cache line size (8 bits).
    pub const CACHE_LINE_SIZE: u16 = 0x0c;
    /// Latency timer (8 bits).
    pub const LATENCY_TIMER: u16 = 0x0d;
    /// Header type (8 bits): [`super::header`].
    pub const HEADER_TYPE: u16 = 0x0e;
    /// Built-in self test (8 bits).
    pub const BIST: u16 = 0x0f;
    /// First base address register (32 bits each).
    pub const BAR0: u16 = 0x10;
    /// Type 1 (bridge) header: primary, secondary and subordinate bus
    /// numbers (8 bits each from here).
    pub const PRIMARY_BUS: u16 = 0x18;
    /// Type 1 header: the bus behind the bridge.
    pub const SECONDARY_BUS: u16 = 0x19;
    /// Type 0 header: subsystem vendor id (16 bits).
    pub const SUBSYSTEM_VENDOR_ID: u16 = 0x2c;
    /// Type 0 header: expansion ROM base address (32 bits).
    pub const ROM_ADDRESS: u16 = 0x30;
    /// Offset of the first capability (8 bits, low 2 bits reserved).
    pub const CAPABILITIES: u16 = 0x34;
    /// Interrupt line (8 bits; a scratch register for software).
    pub const INTERRUPT_LINE: u16 = 0x3c;
    /// Interrupt pin (8 bits; 0: none, 1-4: INTA#-INTD#).
    pub const INTERRUPT_PIN: u16 = 0x3d;
    /// First byte after the header: device-specific registers and
    /// capabilities.
    pub const DEVICE_SPECIFIC: u16 = 0x40;
    /// Size of the legacy configuration space (what mechanism #1 reaches).
    pub const CONFIG_SPACE_SIZE: u16 = 0x100;
}

/// Base address registers in a type 0 header.
pub const BARS_TYPE0: usize = 6;
/// Base address registers in a type 1 (bridge) header.
pub const BARS_TYPE1: usize = 2;

/// Command register bits.
pub mod command {
    /// Respond to I/O space accesses.
    pub const IO_SPACE: u16 = 1 << 0;
    /// Respond to memory space accesses.
    pub const MEMORY_SPACE: u16 = 1 << 1;
    /// May master the bus (DMA, and MSI writes).
    pub const BUS_MASTER: u16 = 1 << 2;
    /// Special cycles.
    pub const SPECIAL_CYCLES: u16 = 1 << 3;
    /// Memory write and invalidate.
    pub const MWI: u16 = 1 << 4;
    /// VGA palette snoop.
    pub const VGA_SNOOP: u16 = 1 << 5;
    /// Parity error response.
    pub const PARITY_ERROR_RESPONSE: u16 = 1 << 6;
    /// SERR# enable.
    pub const SERR: u16 = 1 << 8;
    /// Fast back-to-back enable.
    pub const FAST_BACK_TO_BACK: u16 = 1 << 9;
    /// INTx# disable.
    pub const INTX_DISABLE: u16 = 1 << 10;
}

/// Status register bits.
pub mod status {
    /// The function has a capability list at [`super::reg::CAPABILITIES`].
    pub const CAPABILITIES_LIST: u16 = 1 << 4;
}

/// Header type register.
pub mod header {
    /// Bits 0-6: the layout.
    pub const LAYOUT_MASK: u8 = 0x7f;
    /// Bit 7 (of function 0): the device has functions 1-7.
    pub const MULTI_FUNCTION: u8 = 0x80;
    /// An ordinary function.
    pub const TYPE_NORMAL: u8 = 0;
    /// A PCI-to-PCI bridge.
    pub const TYPE_BRIDGE: u8 = 1;
}

/// Base address register bits.
pub mod bar {
    /// Bit 0: an I/O BAR (else memory).
    pub const IO: u32 = 1 << 0;
    /// Address bits of an I/O BAR.
    pub const IO_ADDRESS_MASK: u32 = !0x3;
    /// Bits 1-2 of a memory BAR: its type.
    pub const MEM_TYPE_MASK: u32 = 0x6;
    /// Memory BAR type: 32-bit.
    pub const MEM_TYPE_32: u32 = 0x0;
    /// Memory BAR type: 64-bit (the next BAR holds the high half).
    pub const MEM_TYPE_64: u32 = 0x4;
    /// Bit 3 of a memory BAR: prefetchable.
    pub const MEM_PREFETCHABLE: u32 = 1 << 3;
    /// Address bits of a memory BAR.
    pub const MEM_ADDRESS_MASK: u32 = !0xf;
}

/// Class codes (class, subclass) the hypervisor's device policy names.
pub mod class {
    /// Bridge devices.
    pub const BRIDGE: u8 = 0x06;
    /// Bridge subclass: host bridge.
    pub const BRIDGE_HOST: u8 = 0x00;
    /// Bridge subclass: ISA bridge (LPC).
    pub const BRIDGE_ISA: u8 = 0x01;
    /// Bridge subclass: PCI-to-PCI bridge.
    pub const BRIDGE_PCI: u8 = 0x04;
}

/// Capability ids and layouts.
pub mod cap {
    /// Offset of the id in a capability (8 bits).
    pub const ID: u16 = 0;
    /// Offset of the next pointer in a capability (8 bits).
    pub const NEXT: u16 = 1;
    /// Power management.
    pub const ID_POWER_MANAGEMENT: u8 = 0x01;
    /// Message-signalled interrupts.
    pub const ID_MSI: u8 = 0x05;
    /// Vendor specific (virtio uses these).
    pub const ID_VENDOR: u8 = 0x09;
    /// PCI Express.
    pub const ID_PCI_EXPRESS: u8 = 0x10;
    /// MSI-X.
    pub const ID_MSIX: u8 = 0x11;

    /// The MSI capability.
    pub mod msi {
        /// Message control (16 bits).
        pub const CONTROL: u16 = 2;
        /// Message address (low 32 bits).
        pub const ADDRESS: u16 = 4;
        /// Control bit 0: MSI enabled.
        pub const CONTROL_ENABLE: u16 = 1 << 0;
        /// Control bit 7: 64-bit message address.
        pub const CONTROL_64BIT: u16 = 1 << 7;
        /// Control bit 8: per-vector masking (mask and pending registers).
        pub const CONTROL_MASKING: u16 = 1 << 8;
        /// Length of the structure: 32-bit address, no masking.
        pub const LEN_32: u16 = 10;
        /// Length: 64-bit address, no masking.
        pub const LEN_64: u16 = 14;
        /// Length: 32-bit address, with mask and pending registers.
        pub const LEN_32_MASKING: u16 = 20;
        /// Length: 64-bit address, with mask and pending registers.
        pub const LEN_64_MASKING: u16 = 24;
    }

    /// The MSI-X capability.
    pub mod msix {
        /// Message control (16 bits).
        pub const CONTROL: u16 = 2;
        /// Table offset and BIR (32 bits).
        pub const TABLE: u16 = 4;
        /// Pending-bit array offset and BIR (32 bits).
        pub const PBA: u16 = 8;
        /// Length of the structure.
        pub const LEN: u16 = 12;
        /// [`CONTROL`] bits 0..=10: table size minus one.
        pub const CONTROL_TABLE_SIZE: u16 = 0x7ff;
        /// [`TABLE`] and [`PBA`] bits 0..=2: which BAR holds the structure.
        pub const BIR_MASK: u32 = 7;
        /// Bytes per table entry (address, data, vector control).
        pub const ENTRY_SIZE: u32 = 16;
    }
}
