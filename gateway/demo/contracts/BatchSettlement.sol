// SPDX-License-Identifier: Apache-2.0
// Written for this repository from the interface and EIP-712 types the x402 Python SDK uses at
// BATCH_SETTLEMENT_ADDRESS: a local stand-in for x402BatchSettlement, NOT the audited upstream
// contract. Payment channels: a payer deposits once (through a deposit collector), signs
// off-chain cumulative vouchers, the receiver's authorizer claims them in batches, anyone
// sweeps the claimed total to the receiver; a cooperative refund or a delayed withdrawal gives
// the unclaimed rest back to the payer. Test and demo only.
pragma solidity 0.8.37;

import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {SafeERC20} from "@openzeppelin/contracts/token/ERC20/utils/SafeERC20.sol";
import {ECDSA} from "@openzeppelin/contracts/utils/cryptography/ECDSA.sol";
import {SignatureChecker} from "@openzeppelin/contracts/utils/cryptography/SignatureChecker.sol";
import {Multicall} from "@openzeppelin/contracts/utils/Multicall.sol";
import {ReentrancyGuardTransient} from "@openzeppelin/contracts/utils/ReentrancyGuardTransient.sol";

interface IDepositCollector {
    /// Move `amount` of `token` from `payer` to the caller (the settlement contract), as the
    /// payer authorized for `channelId` in `data`.
    function collect(address payer, address token, uint256 amount, bytes32 channelId, bytes calldata data) external;
}

contract BatchSettlement is Multicall, ReentrancyGuardTransient {
    using SafeERC20 for IERC20;

    struct ChannelConfig {
        address payer;
        address payerAuthorizer;
        address receiver;
        address receiverAuthorizer;
        address token;
        uint40 withdrawDelay;
        bytes32 salt;
    }

    struct Voucher {
        ChannelConfig channel;
        uint128 maxClaimableAmount;
    }

    struct VoucherClaim {
        Voucher voucher;
        bytes signature;
        uint128 totalClaimed;
    }

    struct ChannelState {
        uint128 balance; // deposited, less refunds and withdrawals (claimed amounts included)
        uint128 totalClaimed; // cumulative amount claimed for the receiver
    }

    struct PendingWithdrawal {
        uint128 amount;
        uint40 initiatedAt;
    }

    struct ReceiverState {
        uint128 totalClaimed;
        uint128 totalSettled;
    }

    uint40 public constant MIN_WITHDRAW_DELAY = 900;
    uint40 public constant MAX_WITHDRAW_DELAY = 2_592_000;

    bytes32 private constant DOMAIN_TYPEHASH =
        keccak256("EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)");
    bytes32 private constant NAME_HASH = keccak256("x402 Batch Settlement");
    bytes32 private constant VERSION_HASH = keccak256("1");
    bytes32 public constant CHANNEL_CONFIG_TYPEHASH = keccak256(
        "ChannelConfig(address payer,address payerAuthorizer,address receiver,address receiverAuthorizer,address token,uint40 withdrawDelay,bytes32 salt)"
    );
    bytes32 public constant VOUCHER_TYPEHASH = keccak256("Voucher(bytes32 channelId,uint128 maxClaimableAmount)");
    bytes32 public constant REFUND_TYPEHASH = keccak256("Refund(bytes32 channelId,uint256 nonce,uint128 amount)");
    bytes32 public constant CLAIM_ENTRY_TYPEHASH =
        keccak256("ClaimEntry(bytes32 channelId,uint128 maxClaimableAmount,uint128 totalClaimed)");
    bytes32 public constant CLAIM_BATCH_TYPEHASH = keccak256(
        "ClaimBatch(ClaimEntry[] claims)ClaimEntry(bytes32 channelId,uint128 maxClaimableAmount,uint128 totalClaimed)"
    );

    mapping(bytes32 channelId => ChannelState) public channels;
    mapping(bytes32 channelId => PendingWithdrawal) public pendingWithdrawals;
    mapping(address receiver => mapping(address token => ReceiverState)) public receivers;
    mapping(bytes32 channelId => uint256) public refundNonce;

    error InvalidChannelConfig();
    error ZeroAmount();
    error DepositNotReceived();
    error InvalidVoucherSignature();
    error InvalidAuthorizerSignature();
    error NotAuthorized();
    error ClaimExceedsVoucher();
    error ClaimExceedsBalance();
    error NothingToSettle();
    error NothingToRefund();
    error InvalidRefundNonce();
    error NoPendingWithdrawal();
    error WithdrawDelayNotElapsed();

    event Deposited(bytes32 indexed channelId, address indexed payer, address indexed token, uint128 amount);
    event Claimed(bytes32 indexed channelId, address indexed receiver, uint128 amount, uint128 totalClaimed);
    event Settled(address indexed receiver, address indexed token, address indexed sender, uint128 amount);
    event Refunded(bytes32 indexed channelId, address indexed payer, uint128 amount);
    event WithdrawInitiated(bytes32 indexed channelId, uint128 amount, uint40 initiatedAt);
    event Withdrawn(bytes32 indexed channelId, address indexed payer, uint128 amount);

    // ---- deposits ----

    function deposit(ChannelConfig calldata config, uint128 amount, address collector, bytes calldata collectorData)
        external
        nonReentrant
    {
        _checkConfig(config);
        if (amount == 0) revert ZeroAmount();
        bytes32 channelId = getChannelId(config);
        IERC20 token = IERC20(config.token);
        uint256 before = token.balanceOf(address(this));
        IDepositCollector(collector).collect(config.payer, config.token, amount, channelId, collectorData);
        // The collector is whatever the caller named: only the tokens that arrived count.
        if (token.balanceOf(address(this)) - before != amount) revert DepositNotReceived();
        channels[channelId].balance += amount;
        emit Deposited(channelId, config.payer, config.token, amount);
    }

    // ---- claims (receiver side) ----

    function claim(VoucherClaim[] calldata voucherClaims) external nonReentrant {
        for (uint256 i = 0; i < voucherClaims.length; i++) {
            if (msg.sender != voucherClaims[i].voucher.channel.receiverAuthorizer) revert NotAuthorized();
            _claim(voucherClaims[i]);
        }
    }

    function claimWithSignature(VoucherClaim[] calldata voucherClaims, bytes calldata authorizerSignature)
        external
        nonReentrant
    {
        bytes32 digest = getClaimBatchDigest(voucherClaims);
        address checked;
        for (uint256 i = 0; i < voucherClaims.length; i++) {
            address authorizer = voucherClaims[i].voucher.channel.receiverAuthorizer;
            if (authorizer != checked) {
                if (!SignatureChecker.isValidSignatureNow(authorizer, digest, authorizerSignature)) {
                    revert InvalidAuthorizerSignature();
                }
                checked = authorizer;
            }
            _claim(voucherClaims[i]);
        }
    }

    /// Pay the receiver everything claimed for it in `token` and not yet paid. Anyone may call.
    function settle(address receiver, address token) external nonReentrant {
        ReceiverState storage r = receivers[receiver][token];
        uint128 amount = r.totalClaimed - r.totalSettled;
        if (amount == 0) revert NothingToSettle();
        r.totalSettled = r.totalClaimed;
        IERC20(token).safeTransfer(receiver, amount);
        emit Settled(receiver, token, msg.sender, amount);
    }

    // ---- refunds (cooperative) ----

    function refund(ChannelConfig calldata config, uint128 amount) external nonReentrant {
        if (msg.sender != config.receiver && msg.sender != config.receiverAuthorizer) revert NotAuthorized();
        _refund(config, getChannelId(config), amount);
    }

    function refundWithSignature(
        ChannelConfig calldata config,
        uint128 amount,
        uint256 nonce,
        bytes calldata receiverAuthorizerSignature
    ) external nonReentrant {
        bytes32 channelId = getChannelId(config);
        if (nonce != refundNonce[channelId]) revert InvalidRefundNonce();
        bytes32 digest = getRefundDigest(channelId, nonce, amount);
        if (!SignatureChecker.isValidSignatureNow(config.receiverAuthorizer, digest, receiverAuthorizerSignature)) {
            revert InvalidAuthorizerSignature();
        }
        refundNonce[channelId] = nonce + 1;
        _refund(config, channelId, amount);
    }

    // ---- withdrawals (payer side, without the receiver) ----

    function initiateWithdraw(ChannelConfig calldata config, uint128 amount) external nonReentrant {
        _checkPayerCaller(config);
        if (amount == 0) revert ZeroAmount();
        bytes32 channelId = getChannelId(config);
        uint40 now_ = uint40(block.timestamp);
        pendingWithdrawals[channelId] = PendingWithdrawal(amount, now_);
        emit WithdrawInitiated(channelId, amount, now_);
    }

    function finalizeWithdraw(ChannelConfig calldata config) external nonReentrant {
        _checkPayerCaller(config);
        bytes32 channelId = getChannelId(config);
        PendingWithdrawal memory pending = pendingWithdrawals[channelId];
        if (pending.initiatedAt == 0) revert NoPendingWithdrawal();
        if (block.timestamp < uint256(pending.initiatedAt) + config.withdrawDelay) revert WithdrawDelayNotElapsed();
        delete pendingWithdrawals[channelId];
        ChannelState storage ch = channels[channelId];
        uint128 available = ch.balance - ch.totalClaimed;
        uint128 amount = pending.amount < available ? pending.amount : available;
        ch.balance -= amount;
        if (amount > 0) IERC20(config.token).safeTransfer(config.payer, amount);
        emit Withdrawn(channelId, config.payer, amount);
    }

    // ---- views: identities and EIP-712 digests ----

    function domainSeparator() public view returns (bytes32) {
        return keccak256(abi.encode(DOMAIN_TYPEHASH, NAME_HASH, VERSION_HASH, block.chainid, address(this)));
    }

    function getChannelId(ChannelConfig calldata c) public view returns (bytes32) {
        return _hashTypedData(
            keccak256(
                abi.encode(
                    CHANNEL_CONFIG_TYPEHASH,
                    c.payer,
                    c.payerAuthorizer,
                    c.receiver,
                    c.receiverAuthorizer,
                    c.token,
                    c.withdrawDelay,
                    c.salt
                )
            )
        );
    }

    function getVoucherDigest(bytes32 channelId, uint128 maxClaimableAmount) public view returns (bytes32) {
        return _hashTypedData(keccak256(abi.encode(VOUCHER_TYPEHASH, channelId, maxClaimableAmount)));
    }

    function getRefundDigest(bytes32 channelId, uint256 nonce, uint128 amount) public view returns (bytes32) {
        return _hashTypedData(keccak256(abi.encode(REFUND_TYPEHASH, channelId, nonce, amount)));
    }

    function getClaimBatchDigest(VoucherClaim[] calldata voucherClaims) public view returns (bytes32) {
        bytes32[] memory entries = new bytes32[](voucherClaims.length);
        for (uint256 i = 0; i < voucherClaims.length; i++) {
            entries[i] = keccak256(
                abi.encode(
                    CLAIM_ENTRY_TYPEHASH,
                    getChannelId(voucherClaims[i].voucher.channel),
                    voucherClaims[i].voucher.maxClaimableAmount,
                    voucherClaims[i].totalClaimed
                )
            );
        }
        return _hashTypedData(keccak256(abi.encode(CLAIM_BATCH_TYPEHASH, keccak256(abi.encodePacked(entries)))));
    }

    // ---- internals ----

    function _claim(VoucherClaim calldata vc) private {
        ChannelConfig calldata config = vc.voucher.channel;
        bytes32 channelId = getChannelId(config);
        bytes32 digest = getVoucherDigest(channelId, vc.voucher.maxClaimableAmount);
        if (!_isPayerSignature(config, digest, vc.signature)) revert InvalidVoucherSignature();
        if (vc.totalClaimed > vc.voucher.maxClaimableAmount) revert ClaimExceedsVoucher();
        ChannelState storage ch = channels[channelId];
        if (vc.totalClaimed > ch.balance) revert ClaimExceedsBalance();
        // Cumulative: a claim at or below what was already claimed moves nothing (so a batch
        // that repeats a claimed voucher still lands).
        if (vc.totalClaimed <= ch.totalClaimed) return;
        uint128 delta = vc.totalClaimed - ch.totalClaimed;
        ch.totalClaimed = vc.totalClaimed;
        receivers[config.receiver][config.token].totalClaimed += delta;
        emit Claimed(channelId, config.receiver, delta, vc.totalClaimed);
    }

    function _refund(ChannelConfig calldata config, bytes32 channelId, uint128 amount) private {
        ChannelState storage ch = channels[channelId];
        uint128 available = ch.balance - ch.totalClaimed;
        uint128 paid = amount < available ? amount : available;
        if (paid == 0) revert NothingToRefund();
        ch.balance -= paid;
        delete pendingWithdrawals[channelId];
        IERC20(config.token).safeTransfer(config.payer, paid);
        emit Refunded(channelId, config.payer, paid);
    }

    function _isPayerSignature(ChannelConfig calldata config, bytes32 digest, bytes calldata signature)
        private
        view
        returns (bool)
    {
        if (config.payerAuthorizer != address(0)) {
            (address recovered, ECDSA.RecoverError err,) = ECDSA.tryRecover(digest, signature);
            return err == ECDSA.RecoverError.NoError && recovered == config.payerAuthorizer;
        }
        return SignatureChecker.isValidSignatureNow(config.payer, digest, signature);
    }

    function _checkConfig(ChannelConfig calldata c) private pure {
        if (
            c.payer == address(0) || c.receiver == address(0) || c.receiverAuthorizer == address(0)
                || c.token == address(0) || c.withdrawDelay < MIN_WITHDRAW_DELAY || c.withdrawDelay > MAX_WITHDRAW_DELAY
        ) revert InvalidChannelConfig();
    }

    function _checkPayerCaller(ChannelConfig calldata c) private view {
        if (msg.sender != c.payer && (c.payerAuthorizer == address(0) || msg.sender != c.payerAuthorizer)) {
            revert NotAuthorized();
        }
    }

    function _hashTypedData(bytes32 structHash) private view returns (bytes32) {
        return keccak256(abi.encodePacked("\x19\x01", domainSeparator(), structHash));
    }
}
