// SPDX-License-Identifier: Apache-2.0
// A local stand-in for a stablecoin WITHOUT EIP-3009 (like Tether USD): a plain ERC-20 with
// 6 decimals, no transferWithAuthorization and no EIP-2612 permit, so x402 can only pay it
// through Permit2 (the payer approves Permit2 once, then signs Permit2 witness transfers).
// Mintable by its owner. Test and demo only.
pragma solidity 0.8.37;

import {ERC20} from "@openzeppelin/contracts/token/ERC20/ERC20.sol";
import {Ownable} from "@openzeppelin/contracts/access/Ownable.sol";

contract TestUSDT is ERC20, Ownable {
    constructor() ERC20("Tether USD", "USDT") Ownable(msg.sender) {}

    function decimals() public pure override returns (uint8) {
        return 6;
    }

    function mint(address to, uint256 amount) external onlyOwner {
        _mint(to, amount);
    }
}
